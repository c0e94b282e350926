// Package deploy_test checks the deployment files under deploy/ with nothing but the Go
// standard library and the module's own packages, so it runs in CI as part of `go test ./...`.
// It does not replace helm lint/template, promtool or hadolint (see deploy/README.md, "Checks").
package deploy_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/metrics"
	"github.com/loraplex/loraplex/serve/openai"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// exposed is what a real server's /metrics shows: metric family name -> label names.
type exposed map[string]map[string]bool

var (
	exposedOnce sync.Once
	exposedSet  exposed
	exposedErr  string
)

// serverMetrics builds the same stack as cmd/server (demo model on the CPU backend, engine,
// metrics on their own registry, OpenAI handler), makes one completion so the histograms have
// samples, and returns the parsed /metrics output.
func serverMetrics(t *testing.T) exposed {
	t.Helper()
	exposedOnce.Do(func() { exposedSet, exposedErr = scrapeServer() })
	if exposedErr != "" {
		t.Fatal(exposedErr)
	}
	return exposedSet
}

func scrapeServer() (exposed, string) {
	b := cpu.New(1)
	defer b.Close()
	cfg, w, tok, src, err := demo.Build(b)
	if err != nil {
		return nil, "demo.Build: " + err.Error()
	}
	defer w.Close()
	tmpl, err := chat.Parse(src)
	if err != nil {
		return nil, "chat.Parse: " + err.Error()
	}
	e, err := serve.NewEngine(cfg, b, w, tok, serve.Options{ModelName: demo.Name, MaxModelLen: 128})
	if err != nil {
		return nil, "serve.NewEngine: " + err.Error()
	}
	defer e.Close()
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.New(e, prometheus.NewRegistry()).Handler())
	mux.Handle("/", openai.New(e, openai.Options{ChatTemplate: tmpl}))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	resp, err := http.Post(srv.URL+"/v1/completions", "application/json",
		strings.NewReader(`{"model":"`+demo.Name+`","prompt":"hi","max_tokens":4,"temperature":0}`))
	if err != nil {
		return nil, "completion: " + err.Error()
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, "completion: " + resp.Status + ": " + string(body)
	}
	resp, err = http.Get(srv.URL + "/metrics")
	if err != nil {
		return nil, "metrics: " + err.Error()
	}
	defer resp.Body.Close()
	out := exposed{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	labelRE := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		labels := map[string]bool{}
		if i := strings.LastIndex(rest, "}"); i >= 0 {
			for _, m := range labelRE.FindAllStringSubmatch(rest[:i], -1) {
				labels[m[1]] = true
			}
		}
		for _, n := range []string{name, strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")} {
			if out[n] == nil {
				out[n] = map[string]bool{}
			}
			for l := range labels {
				out[n][l] = true
			}
		}
	}
	if len(out) == 0 {
		return nil, "empty /metrics"
	}
	return out, ""
}

// Metric names in PromQL: vllm:* and loraplex_* series, and loraplex:* recorded series.
var (
	metricRE   = regexp.MustCompile(`\b(vllm:[a-zA-Z0-9_:]+|loraplex_[a-zA-Z0-9_:]+|loraplex:[a-zA-Z0-9_:]+)`)
	selectorRE = regexp.MustCompile(`\b(vllm:[a-zA-Z0-9_:]+|loraplex_[a-zA-Z0-9_]+|up)\{([^}]*)\}`)
	matcherRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)`)
	recordRE   = regexp.MustCompile(`(?m)^\s*-?\s*record:\s*(\S+)\s*$`)
	exprLineRE = regexp.MustCompile(`(?m)^\s*-?\s*expr:\s*(.+)$`)
)

// labels Prometheus adds at scrape time, and the histogram bucket label.
var scrapeLabels = map[string]bool{"instance": true, "job": true, "le": true}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ruleExprs returns rules.yml's record names and expressions (all single-line by convention,
// which this test enforces).
func ruleExprs(t *testing.T) (records map[string]bool, exprs []string) {
	t.Helper()
	src := read(t, "prometheus/rules.yml")
	records = map[string]bool{}
	for _, m := range recordRE.FindAllStringSubmatch(src, -1) {
		if records[m[1]] {
			t.Errorf("rules.yml: record %s defined twice", m[1])
		}
		records[m[1]] = true
	}
	for _, m := range exprLineRE.FindAllStringSubmatch(src, -1) {
		e := strings.TrimSpace(m[1])
		if e == "|" || e == ">" || e == "|-" || e == ">-" {
			t.Errorf("rules.yml: keep expressions on one line (this test reads them line by line): %q", m[0])
			continue
		}
		exprs = append(exprs, e)
	}
	return records, exprs
}

// dashboardExprs returns every "expr" and templating "query"/"definition" string in the dashboard.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	var d any
	if err := json.Unmarshal([]byte(read(t, "grafana/dashboard.json")), &d); err != nil {
		t.Fatalf("grafana/dashboard.json: %v", err)
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "definition" || k == "query") {
					out = append(out, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(d)
	return out
}

// checkExpr reports metric names and selector labels in e that the server does not expose.
func checkExpr(t *testing.T, where, e string, ex exposed, records map[string]bool) []string {
	t.Helper()
	var used []string
	for _, m := range metricRE.FindAllString(e, -1) {
		if strings.HasPrefix(m, "loraplex:") {
			if !records[m] {
				t.Errorf("%s: %s is neither exposed nor a recording rule in rules.yml: %s", where, m, e)
			}
			continue
		}
		base := m
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			base = strings.TrimSuffix(base, s)
		}
		if ex[m] == nil && ex[base] == nil {
			t.Errorf("%s: metric %s is not in the server's /metrics output: %s", where, m, e)
			continue
		}
		used = append(used, base)
	}
	for _, m := range selectorRE.FindAllStringSubmatch(e, -1) {
		name := m[1]
		if name == "up" {
			continue
		}
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			name = strings.TrimSuffix(name, s)
		}
		for _, lm := range matcherRE.FindAllStringSubmatch(m[2], -1) {
			if l := lm[1]; ex[name] != nil && !ex[name][l] && !scrapeLabels[l] {
				t.Errorf("%s: %s has no label %q: %s", where, name, l, e)
			}
		}
	}
	return used
}

func TestMetricNamesExist(t *testing.T) {
	ex := serverMetrics(t)
	records, exprs := ruleExprs(t)
	if len(exprs) < len(records)+4 {
		t.Errorf("rules.yml: %d expressions for %d records: alerts missing?", len(exprs), len(records))
	}
	used := map[string]bool{}
	for _, e := range exprs {
		for _, n := range checkExpr(t, "rules.yml", e, ex, records) {
			used[n] = true
		}
	}
	// Names in comments and annotations must exist too (a stale name in a description misleads).
	for _, m := range metricRE.FindAllString(read(t, "prometheus/rules.yml"), -1) {
		if base := strings.TrimSuffix(m, "_bucket"); ex[base] == nil && ex[m] == nil && !records[m] {
			t.Errorf("rules.yml mentions unknown metric %s", m)
		}
	}
	dexprs := dashboardExprs(t)
	if len(dexprs) < 20 {
		t.Errorf("dashboard.json: only %d expressions", len(dexprs))
	}
	for _, e := range dexprs {
		for _, n := range checkExpr(t, "dashboard.json", e, ex, records) {
			used[n] = true
		}
	}
	// Coverage: what issue 8 asks the rules and dashboard to show.
	for _, want := range []string{
		"vllm:generation_tokens_total", "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
		"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "loraplex_batch_rows", "loraplex_batch_sequences",
		"loraplex_adapter_requests_total", "loraplex_adapter_generation_tokens_total", "loraplex_adapters_resident",
		"loraplex_adapter_load_seconds", "loraplex_adapter_cache_transfer_seconds_total",
		"loraplex_adapter_cache_events_total", "loraplex_adapter_cache_transfers_total", "loraplex_adapter_loads_total",
	} {
		if !used[want] {
			t.Errorf("neither rules.yml nor dashboard.json uses %s", want)
		}
	}
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("%d metric names checked against /metrics: %s", len(names), strings.Join(names, " "))
}

func TestAlerts(t *testing.T) {
	src := read(t, "prometheus/rules.yml")
	for _, a := range []string{"LoraplexQueueGrowing", "LoraplexKVCacheNearFull", "LoraplexAdapterLoadFailures", "LoraplexNotServing"} {
		if !strings.Contains(src, "alert: "+a+"\n") {
			t.Errorf("rules.yml: alert %s missing", a)
		}
	}
	// The scrape job the NotServing alert selects must be the one prometheus.yml defines.
	if !strings.Contains(read(t, "prometheus/prometheus.yml"), "job_name: loraplex\n") {
		t.Error("prometheus.yml: no job_name: loraplex")
	}
}

func TestDashboardJSON(t *testing.T) {
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			GridPos struct{ H, W, X, Y int } `json:"gridPos"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(strings.NewReader(read(t, "grafana/dashboard.json")))
	if err := dec.Decode(&d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" {
		t.Error("dashboard has no uid")
	}
	ds := read(t, "grafana/provisioning/datasources/prometheus.yml")
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || !strings.Contains(ds, "uid: "+p.Datasource.UID+"\n") {
			t.Errorf("panel %q: datasource is not the provisioned one", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		for _, q := range p.Targets {
			if q.RefID == "" || q.Expr == "" || strings.Count(q.Expr, "(") != strings.Count(q.Expr, ")") {
				t.Errorf("panel %q: bad target %+v", p.Title, q)
			}
		}
	}
}

func TestDockerfiles(t *testing.T) {
	for _, f := range []string{"docker/Dockerfile.cpu", "docker/Dockerfile.cuda"} {
		src := read(t, f)
		var froms, users []string
		for _, line := range strings.Split(src, "\n") {
			if strings.HasPrefix(line, "FROM ") {
				froms = append(froms, line)
			}
			if strings.HasPrefix(line, "USER ") {
				users = append(users, strings.TrimPrefix(line, "USER "))
			}
			if strings.Contains(line, "\t") {
				t.Errorf("%s: tab in %q", f, line)
			}
		}
		if len(froms) < 2 {
			t.Errorf("%s: not multi-stage: %q", f, froms)
		}
		if len(users) == 0 || strings.HasPrefix(users[len(users)-1], "root") || strings.HasPrefix(users[len(users)-1], "0") {
			t.Errorf("%s: the runtime stage must end as a non-root USER, got %q", f, users)
		}
		for _, want := range []string{"EXPOSE 8000 9000", `"--http-addr", "0.0.0.0:8000"`, `"--grpc-addr", "0.0.0.0:9000"`, `"--adapter-dir", "/adapters"`, "./cmd/server"} {
			if want == "./cmd/server" && strings.HasSuffix(f, "cuda") {
				want = "make cuda"
			}
			if !strings.Contains(src, want) {
				t.Errorf("%s: missing %q", f, want)
			}
		}
		if _, err := os.Stat(f + ".dockerignore"); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	cpuSrc := read(t, "docker/Dockerfile.cpu")
	if !strings.Contains(cpuSrc, "CGO_ENABLED=0") || !strings.Contains(cpuSrc, "FROM gcr.io/distroless/static") {
		t.Error("Dockerfile.cpu: want a CGO_ENABLED=0 build on distroless/static")
	}
	cudaSrc := read(t, "docker/Dockerfile.cuda")
	if !strings.Contains(cudaSrc, "FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build") ||
		!strings.Contains(cudaSrc, "FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}\n") {
		t.Error("Dockerfile.cuda: build and runtime stages must use the same CUDA_VERSION devel/runtime pair")
	}
	// The Makefile target the CUDA image runs must exist.
	if !strings.Contains(read(t, "../Makefile"), "\ncuda:") {
		t.Error("Makefile has no cuda target")
	}
}

// TestComposeMounts checks that every host path compose.yaml mounts or builds from exists.
func TestComposeMounts(t *testing.T) {
	src := read(t, "docker/compose.yaml")
	mountRE := regexp.MustCompile(`(?m)^\s*-\s*(\.\.?/[^:\s]+):`)
	n := 0
	for _, m := range mountRE.FindAllStringSubmatch(src, -1) {
		n++
		if _, err := os.Stat("docker/" + m[1]); err != nil {
			t.Errorf("compose.yaml mounts %s: %v", m[1], err)
		}
	}
	if n < 5 {
		t.Errorf("compose.yaml: only %d host mounts found", n)
	}
	for _, want := range []string{"dockerfile: deploy/docker/Dockerfile.cpu", "context: ../..", "prometheus:", "grafana:"} {
		if !strings.Contains(src, want) {
			t.Errorf("compose.yaml: missing %q", want)
		}
	}
	if _, err := os.Stat("../deploy/docker/Dockerfile.cpu"); err != nil {
		t.Error(err)
	}
	// Prometheus scrapes the compose service by name; Grafana reads Prometheus by name.
	if !strings.Contains(read(t, "prometheus/prometheus.yml"), "- loraplex:8000") {
		t.Error("prometheus.yml does not scrape loraplex:8000")
	}
	if !strings.Contains(read(t, "grafana/provisioning/datasources/prometheus.yml"), "url: http://prometheus:9090") {
		t.Error("grafana datasource does not point at the compose prometheus")
	}
}
