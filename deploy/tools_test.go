package deploy_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// These tests run promtool and prometheus from Debian's prometheus package. `make test` (what CI
// runs) installs it when it is missing and apt-get can run (as root); elsewhere, without the
// tools on PATH, the tests skip with a message saying so. The Helm, Kubernetes-schema and
// Dockerfile checks are in the deploy/check module (their modules stay out of this go.mod).

func tool(t *testing.T, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not on PATH, so this check did not run (install: %s; `make test` does that as root)", name, install)
	}
	return p
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestPromtool(t *testing.T) {
	p := tool(t, "promtool", "apt-get install --no-install-recommends prometheus")
	runTool(t, p, "check", "config", "prometheus/prometheus.yml")
	runTool(t, p, "check", "rules", "prometheus/rules.yml")
}

// TestLivePrometheus starts a real Prometheus on loopback with rules.yml, scraping a real server
// every second, and checks that every recording rule returns data and every dashboard query
// evaluates without error.
func TestLivePrometheus(t *testing.T) {
	bin := tool(t, "prometheus", "apt-get install --no-install-recommends prometheus")
	if testing.Short() {
		t.Skip("-short")
	}
	srv, err := startServer()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dir := t.TempDir()
	cfg := strings.NewReplacer("scrape_interval: 5s", "scrape_interval: 1s", "evaluation_interval: 5s", "evaluation_interval: 1s",
		"- loraplex:8000", "- "+strings.TrimPrefix(srv.URL, "http://")).Replace(read(t, "prometheus/prometheus.yml"))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), []byte(read(t, "prometheus/rules.yml")), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); cmd.Wait() }()

	query := func(q string) (int, error) {
		resp, err := http.Get("http://" + addr + "/api/v1/query?" + url.Values{"query": {q}}.Encode())
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var r struct {
			Status string `json:"status"`
			Error  string `json:"error"`
			Data   struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return 0, err
		}
		if r.Status != "success" {
			return 0, &queryError{r.Error}
		}
		return len(r.Data.Result), nil
	}
	records, _ := ruleExprs(t)
	pending := map[string]bool{}
	for r := range records {
		// No adapter is loaded by this server, so the load-latency histogram stays empty
		// (its quantile is NaN but present); everything else must have data.
		pending[r] = true
	}
	start := time.Now()
	deadline := start.Add(20 * time.Second) // typically ~7 s: Prometheus start-up and first rule evaluation
	for len(pending) > 0 && time.Now().Before(deadline) {
		if err := srv.complete(); err != nil {
			t.Fatal(err)
		}
		for r := range pending {
			if n, err := query(r); err == nil && n > 0 {
				delete(pending, r)
				t.Logf("%s has data after %v", r, time.Since(start).Round(100*time.Millisecond))
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	for r := range pending {
		t.Errorf("recording rule %s returned no data", r)
	}
	if n, err := query(`up{job="loraplex"} == 1`); err != nil || n != 1 {
		t.Errorf("up: %d %v", n, err)
	}
	// Every dashboard query evaluates (Grafana's variables replaced as Grafana would).
	rep := strings.NewReplacer("$__rate_interval", "1m", "$model", ".*")
	for _, e := range dashboardExprs(t) {
		if strings.HasPrefix(e, "label_values(") {
			continue // a Grafana function, not PromQL
		}
		if _, err := query(rep.Replace(e)); err != nil {
			t.Errorf("dashboard query %q: %v", e, err)
		}
	}
	if t.Failed() {
		t.Logf("prometheus log:\n%s", log.String())
	}
}

type queryError struct{ msg string }

func (e *queryError) Error() string { return e.msg }
