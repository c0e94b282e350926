// Package deploy_test checks the deployment files under deploy/ with nothing but the Go
// standard library and the module's own packages, so it runs in CI as part of `go test ./...`.
// The real tools run beside it: promtool and Prometheus in tools_test.go, Helm, strict Kubernetes
// decoding and BuildKit's Dockerfile linter in the deploy/check module (deploy/README.md, "Checks").
package deploy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/metrics"
	"github.com/loraplex/loraplex/serve/openai"
	"github.com/loraplex/loraplex/tokenizer"
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

// server is the same stack as cmd/server (demo model on the CPU backend, engine, metrics on
// their own registry, OpenAI handler) on a loopback listener.
type server struct {
	URL   string
	close []func()
}

func (s *server) Close() {
	for i := len(s.close) - 1; i >= 0; i-- {
		s.close[i]()
	}
}

// startServer serves the trained demo (model, four adapters, the router "auto") the way
// cmd/server does by default, so every metric family the dashboards use has series.
func startServer() (*server, error) {
	s := &server{}
	b := cpu.New(1)
	s.close = append(s.close, b.Close)
	root, err := demo.Extract()
	if err != nil {
		s.Close()
		return nil, err
	}
	dir := filepath.Join(root, "model")
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		s.Close()
		return nil, err
	}
	w, err := model.LoadWeights(dir, cfg, b)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.close = append(s.close, func() { w.Close() })
	tok, err := tokenizer.Load(dir)
	if err != nil {
		s.Close()
		return nil, err
	}
	tmpl, err := chat.FromTokenizerConfig(dir)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("chat template: %w", err)
	}
	e, err := serve.NewEngine(cfg, b, w, tok, serve.Options{ModelName: demo.Name, MaxModelLen: 128})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("serve.NewEngine: %w", err)
	}
	s.close = append(s.close, func() { e.Close() })
	for _, d := range demo.Domains {
		if err := e.LoadAdapter(d, filepath.Join(root, "adapters", d)); err != nil {
			s.Close()
			return nil, err
		}
	}
	if err := e.LoadRouter(demo.RouterName, filepath.Join(root, "router")); err != nil {
		s.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.New(e, prometheus.NewRegistry()).Handler())
	mux.Handle("/", openai.New(e, openai.Options{ChatTemplate: tmpl}))
	srv := httptest.NewServer(mux)
	s.close = append(s.close, srv.Close)
	s.URL = srv.URL
	return s, nil
}

// complete makes one completion request.
func (s *server) complete() error {
	resp, err := http.Post(s.URL+"/v1/completions", "application/json",
		strings.NewReader(`{"model":"`+demo.Name+`","prompt":"hi","max_tokens":4,"temperature":0}`))
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("completion: %s: %s", resp.Status, body)
	}
	// One through an adapter and one through the router, so per-adapter and router series exist.
	for _, m := range []string{"python", demo.RouterName} {
		resp, err := http.Post(s.URL+"/v1/completions", "application/json",
			strings.NewReader(`{"model":"`+m+`","prompt":"import os","max_tokens":4,"temperature":0}`))
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("completion on %s: %s: %s", m, resp.Status, body)
		}
	}
	return nil
}

func scrapeServer() (exposed, string) {
	srv, err := startServer()
	if err != nil {
		return nil, err.Error()
	}
	defer srv.Close()
	if err := srv.complete(); err != nil {
		return nil, err.Error()
	}
	resp, err := http.Get(srv.URL + "/metrics")
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
		"loraplex_router_expert_selections_total",
		"vllm:lora_adapter_loaded", "vllm:num_gpu_loaded_lora_adapters", "vllm:max_gpu_lora_adapters",
		"vllm:lora_adapter_load_seconds",
		// Issue 14: the prefix cache's hit rate, overall and per adapter.
		"vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total",
		"loraplex_adapter_prefix_cache_hits_total", "loraplex_adapter_prefix_cache_queries_total",
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

// yamlKeys is a small indentation-based reader for the block-style YAML in values.yaml: it
// returns every mapping key path ("server.httpPort") and the scalar text after each key. List
// items are leaves (their contents are not keyed). It is no YAML parser; it only supports what
// the chart's values.yaml uses, and fails the test on anything it cannot read.
func yamlKeys(t *testing.T, name, src string) map[string]string {
	t.Helper()
	keyRE := regexp.MustCompile(`^("[^"]+"|[A-Za-z0-9_.\-/]+):(?:\s+(.*))?$`)
	type frame struct {
		indent int
		path   string
	}
	var stack []frame
	keys := map[string]string{}
	listIndent := -1
	for i, line := range strings.Split(src, "\n") {
		if strings.Contains(line, "\t") {
			t.Errorf("%s:%d: tab", name, i+1)
		}
		trimmed := strings.TrimLeft(line, " ")
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		indent := len(line) - len(trimmed)
		if listIndent >= 0 && (indent > listIndent || (indent == listIndent && strings.HasPrefix(trimmed, "- "))) {
			continue
		}
		listIndent = -1
		if strings.HasPrefix(trimmed, "- ") {
			listIndent = indent
			continue
		}
		m := keyRE.FindStringSubmatch(strings.TrimRight(trimmed, " "))
		if m == nil {
			t.Errorf("%s:%d: cannot read %q", name, i+1, line)
			continue
		}
		for len(stack) > 0 && stack[len(stack)-1].indent >= indent {
			stack = stack[:len(stack)-1]
		}
		path := strings.Trim(m[1], `"`)
		if len(stack) > 0 {
			path = stack[len(stack)-1].path + "." + path
		}
		if _, dup := keys[path]; dup {
			t.Errorf("%s:%d: key %s twice", name, i+1, path)
		}
		val := m[2]
		if j := strings.Index(val, " #"); j >= 0 {
			val = strings.TrimSpace(val[:j])
		}
		keys[path] = val
		if val == "" {
			stack = append(stack, frame{indent, path})
		}
	}
	return keys
}

const chart = "helm/loraplex"

func templates(t *testing.T) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(chart + "/templates")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		out[e.Name()] = read(t, chart+"/templates/"+e.Name())
	}
	return out
}

// TestYAMLFiles: every YAML file under deploy/ is non-empty, indented with spaces, and has no
// trailing whitespace on key lines. (A real parse is `helm lint` / `promtool check`, not run here.)
func TestYAMLFiles(t *testing.T) {
	var files []string
	for _, dir := range []string{"docker", "prometheus", "grafana/provisioning/datasources", "grafana/provisioning/dashboards", chart, chart + "/templates"} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if n := e.Name(); strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml") || strings.HasSuffix(n, ".tpl") || strings.HasSuffix(n, ".txt") {
				files = append(files, dir+"/"+n)
			}
		}
	}
	if len(files) < 16 {
		t.Errorf("only %d YAML/template files: %v", len(files), files)
	}
	for _, f := range files {
		src := read(t, f)
		if strings.TrimSpace(src) == "" {
			t.Errorf("%s is empty", f)
		}
		if !strings.HasSuffix(src, "\n") {
			t.Errorf("%s: no final newline", f)
		}
		for i, line := range strings.Split(src, "\n") {
			if strings.Contains(line, "\t") {
				t.Errorf("%s:%d: tab", f, i+1)
			}
			if strings.TrimRight(line, " ") != line {
				t.Errorf("%s:%d: trailing space", f, i+1)
			}
		}
		// Templates: every {{ has its }}, and {{ if/with/range/define }} blocks are closed.
		if strings.Contains(src, "{{") {
			if strings.Count(src, "{{") != strings.Count(src, "}}") {
				t.Errorf("%s: unbalanced {{ }}", f)
			}
			open := len(regexp.MustCompile(`\{\{-?\s*(if|with|range|define)\b`).FindAllString(src, -1))
			end := len(regexp.MustCompile(`\{\{-?\s*end\s*-?\}\}`).FindAllString(src, -1))
			if open != end {
				t.Errorf("%s: %d blocks opened, %d ended", f, open, end)
			}
		}
	}
	// Plain YAML keys the tools require.
	for f, want := range map[string][]string{
		"prometheus/prometheus.yml":                       {"global", "scrape_configs", "rule_files"},
		"prometheus/rules.yml":                            {"groups"},
		"docker/compose.yaml":                             {"services", "services.loraplex", "services.prometheus", "services.grafana"},
		"grafana/provisioning/datasources/prometheus.yml": {"apiVersion", "datasources"},
		"grafana/provisioning/dashboards/loraplex.yml":    {"apiVersion", "providers"},
	} {
		keys := yamlKeys(t, f, read(t, f))
		for _, k := range want {
			if _, ok := keys[k]; !ok {
				t.Errorf("%s: no key %s", f, k)
			}
		}
	}
}

func TestChartMetadata(t *testing.T) {
	keys := yamlKeys(t, "Chart.yaml", read(t, chart+"/Chart.yaml"))
	for k, want := range map[string]string{"apiVersion": "v2", "name": "loraplex", "type": "application"} {
		if keys[k] != want {
			t.Errorf("Chart.yaml %s = %q, want %q", k, keys[k], want)
		}
	}
	semver := regexp.MustCompile(`^"?\d+\.\d+\.\d+"?$`)
	for _, k := range []string{"version", "appVersion"} {
		if !semver.MatchString(keys[k]) {
			t.Errorf("Chart.yaml %s = %q, want a semantic version", k, keys[k])
		}
	}
	if keys["description"] == "" {
		t.Error("Chart.yaml: no description")
	}
}

// TestValuesReferences: every .Values.a.b in the templates, and every $p.x (the selected
// profile), names a key that values.yaml defines (in both profiles).
func TestValuesReferences(t *testing.T) {
	values := yamlKeys(t, "values.yaml", read(t, chart+"/values.yaml"))
	refRE := regexp.MustCompile(`\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)`)
	profRE := regexp.MustCompile(`\$p((?:\.[A-Za-z_][A-Za-z0-9_]*)+)`)
	profiles := []string{"cpu", "gpu"}
	n := 0
	for name, src := range templates(t) {
		for _, m := range refRE.FindAllStringSubmatch(src, -1) {
			n++
			if _, ok := values[strings.TrimPrefix(m[1], ".")]; !ok {
				t.Errorf("%s: .Values%s is not in values.yaml", name, m[1])
			}
		}
		for _, m := range profRE.FindAllStringSubmatch(src, -1) {
			n++
			for _, p := range profiles {
				if _, ok := values["profiles."+p+m[1]]; !ok {
					t.Errorf("%s: $p%s is not in profiles.%s", name, m[1], p)
				}
			}
		}
	}
	if n < 50 {
		t.Errorf("only %d values references found", n)
	}
	// Both profiles have the same keys, the default one exists, and the GPU one asks for a GPU.
	for k := range values {
		for _, p := range profiles {
			if rest, ok := strings.CutPrefix(k, "profiles."+p+"."); ok && !strings.HasPrefix(rest, "resources.") {
				for _, q := range profiles {
					if _, ok := values["profiles."+q+"."+rest]; !ok {
						t.Errorf("values.yaml: profiles.%s.%s has no profiles.%s.%s", p, rest, q, rest)
					}
				}
			}
		}
	}
	if _, ok := values["profiles."+values["profile"]]; !ok {
		t.Errorf("values.yaml: default profile %q is not in profiles", values["profile"])
	}
	if values["profiles.gpu.resources.limits.nvidia.com/gpu"] == "" || values["profiles.gpu.device"] != "cuda" {
		t.Error("values.yaml: the gpu profile must limit nvidia.com/gpu and use --device cuda")
	}
	if _, ok := values["profiles.cpu.resources.limits.nvidia.com/gpu"]; ok {
		t.Error("values.yaml: the cpu profile asks for a GPU")
	}
	// Draining: grace covers preStop + --shutdown-timeout; the liveness window outlasts the drain.
	num := func(k string) int {
		v, err := strconv.Atoi(values[k])
		if err != nil {
			t.Errorf("values.yaml %s = %q: %v", k, values[k], err)
		}
		return v
	}
	shutdown := num("server.shutdownTimeoutSeconds")
	if grace := num("lifecycle.preStopSleepSeconds") + shutdown + num("lifecycle.extraGraceSeconds"); grace <= shutdown+num("lifecycle.preStopSleepSeconds") {
		t.Errorf("terminationGracePeriodSeconds %d does not exceed preStop + shutdown timeout", grace)
	}
	if num("probes.liveness.periodSeconds")*num("probes.liveness.failureThreshold") <= shutdown {
		t.Error("liveness window does not exceed the shutdown timeout")
	}
}

// TestChartObjects checks what issue 8 requires of the rendered objects, on the template text.
func TestChartObjects(t *testing.T) {
	tpl := templates(t)
	defined := map[string]bool{}
	for _, m := range regexp.MustCompile(`\{\{-?\s*define\s+"([^"]+)"`).FindAllStringSubmatch(tpl["_helpers.tpl"], -1) {
		defined[m[1]] = true
	}
	for name, src := range tpl {
		for _, m := range regexp.MustCompile(`include\s+"([^"]+)"`).FindAllStringSubmatch(src, -1) {
			if !defined[m[1]] {
				t.Errorf("%s: include %q is not defined in _helpers.tpl", name, m[1])
			}
		}
	}
	for file, wants := range map[string][]string{
		"deployment.yaml": {"kind: Deployment", "llm-d.ai/engine-type: vllm", "inference.networking.k8s.io/engine-type: vllm", "startupProbe:", "readinessProbe:",
			"livenessProbe:", "path: /health", "grpc:\n              port: {{ .Values.server.grpcPort }}", "preStop:",
			"terminationGracePeriodSeconds: {{ add .Values.lifecycle.preStopSleepSeconds .Values.server.shutdownTimeoutSeconds",
			"--shutdown-timeout={{ .Values.server.shutdownTimeoutSeconds }}s", "--adapter-dir={{ .Values.adapters.mountPath }}",
			"persistentVolumeClaim:", "emptyDir:", "initContainers:", "resources:"},
		"service.yaml":        {"kind: Service", "name: http", "name: grpc"},
		"hpa.yaml":            {"apiVersion: autoscaling/v2", "kind: HorizontalPodAutoscaler", "type: Pods"},
		"servicemonitor.yaml": {"apiVersion: monitoring.coreos.com/v1", "kind: ServiceMonitor", "path: /metrics"},
		"inferencepool.yaml": {"apiVersion: inference.networking.k8s.io/v1\n", "kind: InferencePool", "selector:\n    matchLabels:",
			"targetPorts:\n    - number:", "endpointPickerRef:", "failureMode:"},
		"httproute.yaml": {"apiVersion: gateway.networking.k8s.io/v1\n", "kind: HTTPRoute", "kind: Gateway", "parentRefs:",
			"group: inference.networking.k8s.io\n          kind: InferencePool"},
		"pvc.yaml":           {"kind: PersistentVolumeClaim"},
		"bbr-configmap.yaml": {"kind: ConfigMap", "inference.networking.k8s.io/bbr-managed: \"true\"", "baseModel:", "adapters: |"},
	} {
		src, ok := tpl[file]
		if !ok {
			t.Errorf("templates/%s missing", file)
			continue
		}
		for _, w := range wants {
			if !strings.Contains(src, w) {
				t.Errorf("templates/%s: missing %q", file, w)
			}
		}
	}
	// The pod selector, the Service selector and the pool selector are the same labels.
	for _, f := range []string{"deployment.yaml", "service.yaml", "inferencepool.yaml", "servicemonitor.yaml"} {
		if !strings.Contains(tpl[f], `include "loraplex.selectorLabels"`) {
			t.Errorf("templates/%s does not use loraplex.selectorLabels", f)
		}
	}
}

// The chart's defaults for the built-in demo (its served name, and the adapters and router body-based
// routing maps to it) are the demo package's: a renamed demo adapter must not leave the gateway
// routing a name the pods no longer serve.
func TestChartDemoNames(t *testing.T) {
	helpers := templates(t)["_helpers.tpl"]
	if !strings.Contains(helpers, `{{- "`+demo.Name+`" }}`) {
		t.Errorf("_helpers.tpl: loraplex.servedModelName does not default to the demo's name %q", demo.Name)
	}
	m := regexp.MustCompile(`\$names = list((?: "[^"]+")+)`).FindStringSubmatch(helpers)
	if m == nil {
		t.Fatal("_helpers.tpl: no demo name list in loraplex.servedAdapters")
	}
	var got []string
	for _, q := range regexp.MustCompile(`"([^"]+)"`).FindAllStringSubmatch(m[1], -1) {
		got = append(got, q[1])
	}
	want := append(append([]string(nil), demo.Domains...), demo.RouterName)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("_helpers.tpl lists the demo's names as %v, the demo serves %v", got, want)
	}
}
