package grpcapi_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
)

// A name is served once, on gRPC as on HTTP: a load under a served name is InvalidArgument
// unless load_inplace replaces it; an adapter directory's name cannot become a router's; names
// follow one rule; unloading an adapter that a loaded router uses is FailedPrecondition naming
// the router. All through the real gRPC server.
func TestNameLifecycleOverGRPC(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(fixtureDir("llama"), "adapters", "d_regex")
	if err := os.MkdirAll(filepath.Join(dir, "ondisk"), 0o755); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(src)
	for _, ent := range ents {
		b, err := os.ReadFile(filepath.Join(src, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "ondisk", ent.Name()), b, 0o644)
	}
	e := fixtureEngine(t, "llama", serve.Options{AdapterDirs: []string{dir}, AdapterRoots: []string{fixture.RoutersRoot()}})
	ts := startServer(t, e, grpcapi.Options{AllowRuntimeAdapterUpdates: true})
	ctx := ctxTimeout(t, 20*time.Second)
	c := ts.client
	top2 := filepath.Join(fixture.RoutersRoot(), "llama", "top2")
	adapter := func(name string) string { return filepath.Join(fixtureDir("llama"), "adapters", name) }

	if _, err := c.LoadRouter(ctx, &loraplexv1.LoadRouterRequest{Name: "mix", Path: top2}); err != nil {
		t.Fatal(err)
	}
	expert := e.Routers()[0].Experts[0]
	_, err := c.UnloadAdapter(ctx, &loraplexv1.UnloadAdapterRequest{Name: expert})
	wantCode(t, "unload a router's expert", err, codes.FailedPrecondition)
	if !strings.Contains(status.Convert(err).Message(), "'mix'") {
		t.Errorf("unload a router's expert: %v does not name the router", err)
	}

	_, err = c.LoadAdapter(ctx, &loraplexv1.LoadAdapterRequest{Name: "a_qv", Path: adapter("b_all_rslora")})
	wantCode(t, "load over a loaded adapter", err, codes.InvalidArgument)
	if fieldOf(err) != "name" || !strings.Contains(status.Convert(err).Message(), "has already been loaded") {
		t.Errorf("load over a loaded adapter: %v (field %q)", err, fieldOf(err))
	}
	if _, err := c.LoadAdapter(ctx, &loraplexv1.LoadAdapterRequest{Name: "a_qv", Path: adapter("b_all_rslora"), LoadInplace: true}); err != nil {
		t.Fatalf("load_inplace: %v", err)
	}
	var ref fixtureCase
	for _, x := range loadCases(t, "llama") {
		if x.Adapter == "b_all_rslora" {
			ref = x
			break
		}
	}
	toks, _, err := generateTrace(t, ts, &loraplexv1.GenerateRequest{Model: "a_qv", Prompt: tokenPrompt(ref.Prompt...),
		Params: &loraplexv1.SamplingParams{MaxTokens: int32(len(ref.Steps)), IgnoreEos: true}})
	if err != nil || !slices.Equal(toks, ref.Tokens()) {
		t.Errorf("a_qv after replacement: %v %v, want b_all_rslora's %v", toks, err, ref.Tokens())
	}

	_, err = c.LoadRouter(ctx, &loraplexv1.LoadRouterRequest{Name: "mix", Path: top2})
	wantCode(t, "second router load", err, codes.InvalidArgument)
	if _, err := c.LoadRouter(ctx, &loraplexv1.LoadRouterRequest{Name: "mix", Path: top2, LoadInplace: true}); err != nil {
		t.Errorf("router load_inplace: %v", err)
	}
	_, err = c.LoadRouter(ctx, &loraplexv1.LoadRouterRequest{Name: "ondisk", Path: top2})
	wantCode(t, "router over an adapter directory's name", err, codes.InvalidArgument)

	for _, name := range []string{" x", "a\u202eb", "a\x00b", strings.Repeat("n", serve.MaxNameBytes+1)} {
		_, err = c.LoadAdapter(ctx, &loraplexv1.LoadAdapterRequest{Name: name, Path: adapter("a_qv")})
		wantCode(t, "adapter name "+name, err, codes.InvalidArgument)
		_, err = c.LoadRouter(ctx, &loraplexv1.LoadRouterRequest{Name: name, Path: top2})
		wantCode(t, "router name "+name, err, codes.InvalidArgument)
	}

	if _, err := c.UnloadRouter(ctx, &loraplexv1.UnloadRouterRequest{Name: "mix"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UnloadAdapter(ctx, &loraplexv1.UnloadAdapterRequest{Name: expert}); err != nil {
		t.Errorf("unload the former expert: %v", err)
	}
}

// Concurrent loads of one name over gRPC, as an adapter and as a router: exactly one succeeds.
func TestConcurrentLoadsOverGRPC(t *testing.T) {
	e := fixtureEngine(t, "llama", serve.Options{MaxLoRAs: 8, AdapterRoots: []string{fixture.RoutersRoot()}})
	ts := startServer(t, e, grpcapi.Options{AllowRuntimeAdapterUpdates: true})
	ctx := ctxTimeout(t, 20*time.Second)
	top2 := filepath.Join(fixture.RoutersRoot(), "llama", "top2")
	for _, name := range []string{"ra", "rb", "rc"} {
		var wg sync.WaitGroup
		errs := make([]error, 6)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if i%2 == 0 {
					_, errs[i] = ts.client.LoadAdapter(ctx, &loraplexv1.LoadAdapterRequest{Name: name, Path: filepath.Join(fixtureDir("llama"), "adapters", "a_qv")})
				} else {
					_, errs[i] = ts.client.LoadRouter(ctx, &loraplexv1.LoadRouterRequest{Name: name, Path: top2})
				}
			}()
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			switch status.Code(err) {
			case codes.OK:
				ok++
			case codes.InvalidArgument, codes.FailedPrecondition:
			default:
				t.Errorf("%s: %v", name, err)
			}
		}
		if ok != 1 {
			t.Errorf("%s: %d loads succeeded: %v", name, ok, errs)
		}
	}
}
