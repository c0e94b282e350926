package grpcapi_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
)

// copiedEngine serves a copy of fixture model name (weights and adapters) from a temp dir on
// the CPU backend, so that the test may change the files under the running server. It
// returns the engine and the copy's folder.
func copiedEngine(t *testing.T, name string, opt serve.Options) (*serve.Engine, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	copyDir(t, fixtureDir(name), dir)
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := cpu.New(2)
	w, err := model.LoadWeights(dir, cfg, b)
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	opt.ModelName, opt.Logger = name, testLogger(t)
	e, err := serve.NewEngine(cfg, b, w, nil, opt)
	if err != nil {
		b.Close()
		w.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(); b.Close(); w.Close() })
	return e, dir
}

// generate runs one greedy request to its end.
func generate(ctx context.Context, t *testing.T, ts *testServer, model string, prompt []int, n int) ([]int32, error) {
	t.Helper()
	st, err := ts.client.Generate(ctx, &loraplexv1.GenerateRequest{Model: model, Prompt: tokenPrompt(prompt...),
		Params: &loraplexv1.SamplingParams{MaxTokens: int32(n), IgnoreEos: true}})
	if err != nil {
		return nil, err
	}
	got, _, _, err := collect(t, st)
	return got, err
}

// An adapter's tensors live in private memory once loaded: overwriting its file with a plain
// cp (truncate, then write other bytes) or truncating it leaves the loaded adapter computing
// exactly what it did, and the server alive. (Before, the CPU backend computed LoRA straight
// from the file's mapping: the next request on the adapter died of SIGBUS in dotBF16AVX2.)
func TestAdapterFileChangedUnderServer(t *testing.T) {
	e, dir := copiedEngine(t, "llama", serve.Options{})
	ts := startServer(t, e, grpcapi.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	for _, a := range []string{"a_qv", "b_all_rslora"} {
		if err := e.LoadAdapter(a, filepath.Join(dir, "adapters", a)); err != nil {
			t.Fatal(err)
		}
	}
	var cases []fixtureCase
	for _, c := range loadCases(t, "llama") {
		if c.Adapter == "a_qv" || c.Adapter == "b_all_rslora" {
			cases = append(cases, c)
		}
	}
	check := func(when string) {
		t.Helper()
		for _, c := range cases {
			got, err := generate(ctx, t, ts, c.Adapter, c.Prompt, len(c.Steps))
			if err != nil {
				t.Fatalf("%s: %s: %v", when, c.Adapter, err)
			}
			want := make([]int32, len(c.Steps))
			for i, s := range c.Steps {
				want[i] = int32(s.Token)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%s: %s prompt %v: tokens %v, want %v", when, c.Adapter, c.Prompt, got, want)
			}
		}
	}
	check("before")
	weights := func(a string) string { return filepath.Join(dir, "adapters", a, "adapter_model.safetensors") }
	// cp of a smaller adapter's file over b_all_rslora's (cp truncates, then writes), and
	// a_qv's file truncated to nothing.
	other, err := os.ReadFile(weights("a_qv"))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(weights("b_all_rslora")); err != nil || st.Size() <= int64(len(other)) {
		t.Fatalf("the overwriting file must be smaller: %v %v", st, err)
	}
	if err := os.WriteFile(weights("b_all_rslora"), other, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(weights("a_qv"), 0); err != nil {
		t.Fatal(err)
	}
	check("after the files changed")
	if !e.Ready() {
		t.Fatalf("engine not ready: %v", e.BackendErr())
	}
}

// The base model's weights are computed from their file mapping on the CPU backend. A file
// truncated under the running server (a fault reading the mapping) stops the backend for good,
// and cleanly: the request in flight fails with Unavailable saying the weights' file changed,
// health turns NOT_SERVING, new requests are refused the same way, and the process lives on.
// (Before, the process died of SIGBUS.)
func TestWeightsTruncatedUnderServer(t *testing.T) {
	e, dir := copiedEngine(t, "llama", serve.Options{MaxModelLen: longLen})
	ts := startServer(t, e, grpcapi.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { defer close(watched); ts.svc.WatchReady(watchCtx, 5*time.Millisecond) }()
	defer func() { stopWatch(); <-watched }()
	h := healthpb.NewHealthClient(ts.conn)
	health := func() healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		r, err := h.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetStatus()
	}
	if s := health(); s != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before: %v", s)
	}

	st, err := ts.client.Generate(ctx, &loraplexv1.GenerateRequest{Prompt: tokenPrompt(1, 2, 3), Params: long})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no weights files: %v", err)
	}
	for _, f := range files {
		if err := os.Truncate(f, 0); err != nil {
			t.Fatal(err)
		}
	}
	wantFailed := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "changed on disk") {
			t.Fatalf("%s: %v, want Unavailable saying the weights' file changed", what, err)
		}
	}
	_, _, _, err = collect(t, st)
	wantFailed("the request in flight", err)
	waitFor(t, "health to turn NOT_SERVING", func() bool { return health() == healthpb.HealthCheckResponse_NOT_SERVING })
	_, err = generate(ctx, t, ts, "", []int{1, 2, 3}, 4)
	wantFailed("a new request", err)
	if e.BackendErr() == nil {
		t.Fatal("no backend error")
	}
}

// An adapter whose rank is above --max-lora-rank is refused when it is loaded, naming the
// limit; one within it loads.
func TestMaxLoRARankRefused(t *testing.T) {
	e, _ := copiedEngine(t, "llama", serve.Options{MaxLoRARank: 8, AdapterRoots: []string{fixtureDir("llama")}})
	ts := startServer(t, e, grpcapi.Options{AllowRuntimeAdapterUpdates: true})
	ctx := ctxTimeout(t, 10*time.Second)
	load := func(name, dir string) error {
		_, err := ts.client.LoadAdapter(ctx, &loraplexv1.LoadAdapterRequest{Name: name, Path: filepath.Join(fixtureDir("llama"), "adapters", dir)})
		return err
	}
	if err := load("r8", "a_qv"); err != nil {
		t.Fatal(err)
	}
	err := load("r16", "c_patterns")
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--max-lora-rank") {
		t.Fatalf("rank 16 under --max-lora-rank 8: %v", err)
	}
}
