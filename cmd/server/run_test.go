package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// logBuffer collects the server's log lines safely across goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

var addrRE = regexp.MustCompile(`msg="HTTP server listening" addr=(\S+)`)

// start runs the server in the background and returns its base URL, its log and a stop
// function that cancels the context and returns run's error.
func start(t *testing.T, args ...string) (string, *logBuffer, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &logBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, append([]string{"--http-addr", "127.0.0.1:0"}, args...), logs) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := addrRE.FindStringSubmatch(logs.String()); m != nil {
			var once sync.Once
			var runErr error
			stop := func() error { // idempotent, so tests can both defer it and check it
				once.Do(func() {
					cancel()
					select {
					case runErr = <-done:
					case <-time.After(15 * time.Second):
						t.Error("run did not return after cancel")
					}
				})
				return runErr
			}
			return "http://" + m[1], logs, stop
		}
		select {
		case err := <-done:
			cancel()
			t.Fatalf("run exited early: %v\n%s", err, logs)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("server did not start:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode == 200 {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v: %s", url, err, b)
		}
	}
	return resp.StatusCode
}

type modelList struct {
	Data []struct {
		ID     string  `json:"id"`
		Parent *string `json:"parent"`
	} `json:"data"`
}

func TestRunDemo(t *testing.T) {
	url, logs, stop := start(t, "--max-model-len", "128", "--grpc-addr", "127.0.0.1:0", "--threads", "1")
	if st := getJSON(t, url+"/health", nil); st != 200 {
		t.Errorf("health %d", st)
	}
	var ml modelList
	// The trained demo: base, four domain adapters and the router over them.
	if st := getJSON(t, url+"/v1/models", &ml); st != 200 || len(ml.Data) != 6 || ml.Data[0].ID != "loraplex-demo" || ml.Data[5].ID != "auto" {
		t.Errorf("models %d %+v", st, ml)
	}
	// What the README shows: on Python code the router's trace names the Python adapter.
	tresp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(
		`{"model":"auto","prompt":"import os\nimport sys\n\n\ndef main(argv):\n    for name in argv:\n","max_tokens":16,"temperature":0,"expert_trace":true}`))
	if err != nil {
		t.Fatal(err)
	}
	var traced struct {
		Choices []struct {
			Text    string             `json:"text"`
			Summary map[string]float64 `json:"expert_summary"`
		} `json:"choices"`
	}
	tbody, _ := io.ReadAll(tresp.Body)
	tresp.Body.Close()
	if err := json.Unmarshal(tbody, &traced); err != nil || tresp.StatusCode != 200 || len(traced.Choices) != 1 {
		t.Fatalf("routed completion %d: %v %s", tresp.StatusCode, err, tbody)
	}
	best, share := "", 0.0
	for e, v := range traced.Choices[0].Summary {
		if v > share {
			best, share = e, v
		}
	}
	if best != "python" {
		t.Errorf("router on Python code chose %v most (text %q), want python", traced.Choices[0].Summary, traced.Choices[0].Text)
	}
	// The gRPC API on its own port reports SERVING through the standard health service.
	addr := regexp.MustCompile(`gRPC server listening" addr=(\S+)|msg="gRPC server listening" addr=(\S+)`).FindStringSubmatch(logs.String())
	if addr == nil {
		t.Fatalf("no gRPC address in the log:\n%s", logs)
	}
	target := addr[1] + addr[2]
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hr.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC health: %v %v", hr, err)
	}
	// Prometheus metrics are served beside the API.
	mresp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mbody, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if mresp.StatusCode != 200 || !strings.Contains(string(mbody), "vllm:num_requests_running") || !strings.Contains(string(mbody), "vllm:lora_requests_info") {
		t.Errorf("metrics %d: %.300s", mresp.StatusCode, mbody)
	}
	resp, err := http.Post(url+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"messages":[{"role":"user","content":"hi"}],"max_tokens":4}`))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("chat %d", resp.StatusCode)
	}
	if err := stop(); err != nil {
		t.Fatalf("run returned %v", err)
	}
	out := logs.String()
	for _, want := range []string{"serving the built-in demo", "gRPC server listening", autoDeviceLog(), "stopped"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

func TestRunFixtureWithAdapters(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "models", "llama")
	url, _, stop := start(t, "--model", dir, "--served-model-name", "tiny", "--device", "cpu", "--api-key", "k",
		"--adapter", "a_qv="+filepath.Join(dir, "adapters", "a_qv"), "--adapter", "d_regex="+filepath.Join(dir, "adapters", "d_regex"))
	defer stop()
	if st := getJSON(t, url+"/health", nil); st != 200 {
		t.Errorf("health %d", st)
	}
	if st := getJSON(t, url+"/v1/models", nil); st != 401 {
		t.Errorf("models without key: %d", st)
	}
	req, _ := http.NewRequest(http.MethodGet, url+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer k")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var ml modelList
	json.NewDecoder(resp.Body).Decode(&ml)
	resp.Body.Close()
	var ids []string
	for _, m := range ml.Data {
		ids = append(ids, m.ID)
	}
	if strings.Join(ids, ",") != "tiny,a_qv,d_regex" || ml.Data[1].Parent == nil || *ml.Data[1].Parent != "tiny" {
		t.Errorf("models %v", ids)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--device", "tpu"}, "want auto, cpu"},
		{[]string{"--adapter", "noequals"}, "NAME=PATH"},
		{[]string{"--log-level", "loud"}, "log-level"},
		{[]string{"--max-num-seqs", "-1"}, "negative"},
		{[]string{"--long-prefill-token-threshold", "-1"}, "long-prefill-token-threshold must not be negative"},
		{[]string{"--model", "/nonexistent"}, "config.json"},
		{[]string{"--tokenizer", "x"}, "needs --model"},
		{[]string{"--adapter", "x=/nonexistent", "--max-model-len", "64"}, "x"},
		{[]string{"--router", "noequals"}, "NAME=DIR"},
		{[]string{"--router", "r=/nonexistent", "--max-model-len", "64"}, "--router r=/nonexistent"},
		{[]string{"--http-addr", "256.0.0.1:99999"}, ""},
		{[]string{"stray"}, "unexpected"},
	} {
		err := run(context.Background(), c.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want one mentioning %q", c.args, err, c.want)
		}
	}
	if err := run(context.Background(), []string{"--help"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
}

// --long-prefill-token-threshold reaches the engine, which says so at startup; a threshold
// above --max-num-batched-tokens is the whole budget (a long prefill is never held back).
func TestLongPrefillTokenThresholdFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-num-batched-tokens", "64", "--long-prefill-token-threshold", "24"}, "long_prefill_token_threshold=24"},
		{[]string{"--max-num-batched-tokens", "64", "--long-prefill-token-threshold", "1000"}, "long_prefill_token_threshold=64"},
		{[]string{"--max-num-batched-tokens", "64"}, "long_prefill_token_threshold=16"},
	} {
		_, logs, stop := start(t, append([]string{"--max-model-len", "64"}, c.args...)...)
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs.String(), c.want) {
			t.Errorf("%v: startup log lacks %q:\n%s", c.args, c.want, logs)
		}
	}
}

// TestGracefulShutdown cancels the server while a stream is running: health turns 503, the
// stream still completes normally, and run returns nil.
func TestGracefulShutdown(t *testing.T) {
	url, _, stop := start(t, "--max-model-len", "512", "--shutdown-timeout", "20s")
	resp, err := http.Post(url+"/v1/completions", "application/json",
		strings.NewReader(`{"prompt":"hi","max_tokens":400,"ignore_eos":true,"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, 6)
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "data: " {
		t.Fatalf("stream start %q: %v", first, err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	saw503 := false
	for i := 0; i < 200 && !saw503; i++ {
		r, err := http.Get(url + "/health")
		if err != nil {
			break // already closed
		}
		r.Body.Close()
		saw503 = r.StatusCode == 503
		time.Sleep(2 * time.Millisecond)
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(rest), `"finish_reason":"length"`) || !strings.HasSuffix(string(rest), "data: [DONE]\n\n") {
		t.Errorf("stream did not finish normally; tail: %q", tail(string(rest)))
	}
	if err := <-stopped; err != nil {
		t.Fatalf("run returned %v", err)
	}
	if !saw503 {
		t.Log("health never answered 503 during the drain (the stream finished first)")
	}
}

func tail(s string) string {
	if len(s) > 300 {
		return s[len(s)-300:]
	}
	return s
}

// hostGet sends GET path with the given Host header and returns the status.
func hostGet(t *testing.T, url, path, host string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// Without an API key the server answers only to IP addresses, loopback names, its listen host
// and --allowed-hosts, so a DNS-rebinding page cannot read it, while Kubernetes probes and
// Prometheus (Host: <pod IP>:<port>) reach /health and /metrics, and --allowed-hosts widens it.
func TestHostCheckKeepsProbesAndScrapes(t *testing.T) {
	url, _, stop := start(t, "--max-model-len", "64", "--threads", "1", "--allowed-hosts", "loraplex.ns.svc,api.example")
	defer stop()
	for _, c := range []struct {
		path, host string
		want       int
	}{
		{"/health", "10.244.1.7:8000", 200},
		{"/metrics", "10.244.1.7:8000", 200},
		{"/metrics", "loraplex-metrics.monitoring:8000", 200},
		{"/v1/models", "10.244.1.7:8000", 200},
		{"/v1/models", "127.0.0.1:8000", 200},
		{"/v1/models", "loraplex.ns.svc:8000", 200},
		{"/v1/models", "api.example", 200},
		{"/v1/models", "rebind.evil.example:8000", 403},
		{"/health", "rebind.evil.example:8000", 200},
	} {
		if got := hostGet(t, url, c.path, c.host); got != c.want {
			t.Errorf("GET %s with Host %s: %d, want %d", c.path, c.host, got, c.want)
		}
	}
}
