package grpcapi_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/testengine"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
)

// routerEngine serves the llama fixture with its adapters and every fixture router; the
// routers folder is an adapter root too.
func routerEngine(t *testing.T, opt serve.Options) (*serve.Engine, []fixtureCase) {
	t.Helper()
	opt.AdapterRoots = append(opt.AdapterRoots, fixture.RoutersRoot())
	e := fixtureEngine(t, "llama", opt)
	return e, testengine.LoadRouters(t, e, "llama")
}

// generateTrace runs one Generate call and returns its tokens and expert trace.
func generateTrace(t *testing.T, ts *testServer, req *loraplexv1.GenerateRequest) ([]int, [][]string, error) {
	t.Helper()
	st, err := ts.client.Generate(ctxTimeout(t, 20*time.Second), req)
	if err != nil {
		return nil, nil, err
	}
	var toks []int
	var trace [][]string
	for {
		r, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return toks, trace, nil
			}
			return toks, trace, err
		}
		if len(r.GetExpertTrace()) != 0 && len(r.GetExpertTrace()) != len(r.GetTokenIds()) {
			t.Errorf("response with %d tokens and %d trace entries", len(r.GetTokenIds()), len(r.GetExpertTrace()))
		}
		for _, id := range r.GetTokenIds() {
			toks = append(toks, int(id))
		}
		for _, te := range r.GetExpertTrace() {
			trace = append(trace, te.GetLayers())
		}
	}
}

// TestRouterGenerateMatchesReference: over a real gRPC connection, every router case of the
// PyTorch reference gives exactly the reference tokens, with an expert trace of one entry per
// token naming an expert (or "") per layer; without expert_trace there is no trace. ListModels
// and ListRouters list the routers with their experts, and the selection counts grew.
func TestRouterGenerateMatchesReference(t *testing.T) {
	e, cases := routerEngine(t, serve.Options{MaxNumSeqs: 8})
	ts := startServer(t, e, grpcapi.Options{})
	ctx := ctxTimeout(t, 20*time.Second)
	models, err := ts.client.ListModels(ctx, &loraplexv1.ListModelsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	experts := map[string][]string{}
	for _, m := range models.GetModels() {
		if m.GetKind() == "router" {
			if m.GetParent() != "llama" || len(m.GetExperts()) == 0 {
				t.Errorf("router %v", m)
			}
			experts[m.GetId()] = m.GetExperts()
		} else if len(m.GetExperts()) != 0 {
			t.Errorf("%v has experts", m)
		}
	}
	traced := 0
	for _, c := range cases {
		if experts[c.Adapter] == nil {
			t.Fatalf("router %q not listed in %v", c.Adapter, models)
		}
		want := c.Tokens()
		params := &loraplexv1.SamplingParams{MaxTokens: int32(len(want)), IgnoreEos: true}
		toks, trace, err := generateTrace(t, ts, &loraplexv1.GenerateRequest{Model: c.Adapter, Prompt: tokenPrompt(c.Prompt...), Params: params, ExpertTrace: true})
		if err != nil {
			t.Fatalf("%s: %v", c.Adapter, err)
		}
		if !slices.Equal(toks, want) {
			t.Errorf("%s %v: tokens %v, want %v", c.Adapter, c.Prompt, toks, want)
		}
		if len(trace) != len(toks) {
			t.Errorf("%s: %d trace entries for %d tokens", c.Adapter, len(trace), len(toks))
		}
		for _, layers := range trace {
			if len(layers) != 2 {
				t.Errorf("%s: trace entry %q, want 2 layers", c.Adapter, layers)
			}
			for _, x := range layers {
				if x != "" && !slices.Contains(experts[c.Adapter], x) {
					t.Errorf("%s: %q is not an expert of %v", c.Adapter, x, experts[c.Adapter])
				}
			}
		}
		traced += len(trace)
		toks, trace, err = generateTrace(t, ts, &loraplexv1.GenerateRequest{Model: c.Adapter, Prompt: tokenPrompt(c.Prompt...), Params: params})
		if err != nil || !slices.Equal(toks, want) || trace != nil {
			t.Errorf("untraced %s: tokens %v trace %v err %v", c.Adapter, toks, trace, err)
		}
	}
	rs, err := ts.client.ListRouters(ctx, &loraplexv1.ListRoutersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var selected int64
	for _, r := range rs.GetRouters() {
		if !slices.Equal(r.GetExperts(), experts[r.GetName()]) || len(r.GetSelections()) != 2 || r.GetPath() == "" || r.GetCreated() == 0 {
			t.Errorf("router %v", r)
		}
		for _, l := range r.GetSelections() {
			if len(l.GetCounts()) != len(r.GetExperts()) {
				t.Errorf("%s: counts %v for experts %v", r.GetName(), l.GetCounts(), r.GetExperts())
			}
			for _, n := range l.GetCounts() {
				selected += n
			}
		}
	}
	// Both traced and untraced requests count; null experts can take a layer's top-1.
	if len(rs.GetRouters()) != len(experts) || selected == 0 || selected > int64(2*2*traced) {
		t.Errorf("%d routers, %d selections for %d traced tokens", len(rs.GetRouters()), selected, traced)
	}
}

// TestRouterErrors: a trace for a non-router is InvalidArgument naming expert_trace; LoadRouter
// and UnloadRouter follow LoadAdapter's permission and path rules and map the engine's errors
// to their codes; a router loaded at runtime serves and goes away when unloaded.
func TestRouterErrors(t *testing.T) {
	e, cases := routerEngine(t, serve.Options{})
	ctx := ctxTimeout(t, 20*time.Second)
	off := startServer(t, e, grpcapi.Options{})
	top1 := filepath.Join(fixture.RoutersRoot(), "llama", "top1")
	_, err := off.client.LoadRouter(ctx, &loraplexv1.LoadRouterRequest{Name: "mix", Path: top1})
	wantCode(t, "load while disabled", err, codes.PermissionDenied)
	_, err = off.client.UnloadRouter(ctx, &loraplexv1.UnloadRouterRequest{Name: "top1"})
	wantCode(t, "unload while disabled", err, codes.PermissionDenied)

	ts := startServer(t, e, grpcapi.Options{AllowRuntimeAdapterUpdates: true})
	c := ts.client
	for _, model := range []string{"", "llama", "a_qv", "nope"} {
		_, _, err := generateTrace(t, ts, &loraplexv1.GenerateRequest{Model: model, Prompt: tokenPrompt(1, 2), ExpertTrace: true})
		wantCode(t, "trace for "+model, err, codes.InvalidArgument)
		if f := fieldOf(err); f != "expert_trace" {
			t.Errorf("trace for %q: field %q", model, f)
		}
	}

	notBundle := filepath.Join(fixtureDir("llama"), "adapters", "a_qv")
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "router.json"), []byte("{}"), 0o644)
	for _, tc := range []struct {
		name, path string
		code       codes.Code
		field      string
	}{
		{"", top1, codes.InvalidArgument, "name"},
		{"mix", "", codes.InvalidArgument, "path"},
		{"mix", outside, codes.PermissionDenied, ""},
		{"mix", filepath.Join(fixture.RoutersRoot(), "nope"), codes.NotFound, ""},
		{"mix", notBundle, codes.NotFound, ""},
		{"../x", top1, codes.InvalidArgument, "name"},
		{"a_qv", top1, codes.InvalidArgument, "name"},
	} {
		_, err := c.LoadRouter(ctx, &loraplexv1.LoadRouterRequest{Name: tc.name, Path: tc.path})
		wantCode(t, "LoadRouter "+tc.name+" "+tc.path, err, tc.code)
		if tc.field != "" && fieldOf(err) != tc.field {
			t.Errorf("LoadRouter %q %q: field %q, want %q", tc.name, tc.path, fieldOf(err), tc.field)
		}
	}
	small := fixtureEngine(t, "llama", serve.Options{MaxLoRAs: 3, AdapterRoots: []string{fixture.RoutersRoot()}})
	sts := startServer(t, small, grpcapi.Options{AllowRuntimeAdapterUpdates: true})
	_, err = sts.client.LoadRouter(ctx, &loraplexv1.LoadRouterRequest{Name: "mix", Path: top1})
	wantCode(t, "four experts, three slots", err, codes.FailedPrecondition)
	_, err = c.UnloadRouter(ctx, &loraplexv1.UnloadRouterRequest{Name: "mix"})
	wantCode(t, "unload of nothing", err, codes.NotFound)

	if _, err := c.LoadRouter(ctx, &loraplexv1.LoadRouterRequest{Name: "mix", Path: top1}); err != nil {
		t.Fatal(err)
	}
	var ref fixtureCase
	for _, x := range cases {
		if x.Adapter == "top1" {
			ref = x
			break
		}
	}
	toks, trace, err := generateTrace(t, ts, &loraplexv1.GenerateRequest{Model: "mix", Prompt: tokenPrompt(ref.Prompt...),
		Params: &loraplexv1.SamplingParams{MaxTokens: int32(len(ref.Steps)), IgnoreEos: true}, ExpertTrace: true})
	if err != nil || !slices.Equal(toks, ref.Tokens()) || len(trace) != len(toks) {
		t.Errorf("mix: tokens %v trace %v err %v, want tokens %v", toks, trace, err, ref.Tokens())
	}
	if _, err := c.UnloadRouter(ctx, &loraplexv1.UnloadRouterRequest{Name: "mix"}); err != nil {
		t.Fatal(err)
	}
	_, _, err = generateTrace(t, ts, &loraplexv1.GenerateRequest{Model: "mix", Prompt: tokenPrompt(1, 2)})
	wantCode(t, "generate with an unloaded router", err, codes.NotFound)
}

// fieldOf is the field a status's BadRequest detail names.
func fieldOf(err error) string {
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) == 1 {
			return br.GetFieldViolations()[0].GetField()
		}
	}
	return ""
}
