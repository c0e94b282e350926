package grpcapi_test

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
)

// TestAdapterRoundTrip: list, load under a new name, generate with it, unload, and see each
// step in ListModels and ListAdapters.
func TestAdapterRoundTrip(t *testing.T) {
	e := fixtureEngine(t, "llama", serve.Options{})
	ts := startServer(t, e, grpcapi.Options{AllowRuntimeAdapterUpdates: true})
	ctx := ctxTimeout(t, 10*time.Second)
	c := ts.client

	models := func() []string {
		t.Helper()
		r, err := c.ListModels(ctx, &loraplexv1.ListModelsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range r.GetModels() {
			ids = append(ids, m.GetId()+"/"+m.GetKind()+"/"+m.GetParent())
			if m.GetMaxModelLen() != 64 || m.GetCreated() == 0 {
				t.Fatalf("model %v", m)
			}
		}
		return ids
	}
	adapters := func() []*loraplexv1.Adapter {
		t.Helper()
		r, err := c.ListAdapters(ctx, &loraplexv1.ListAdaptersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetAdapters()
	}
	want := []string{"llama/base/", "a_qv/adapter/llama", "b_all_rslora/adapter/llama", "c_patterns/adapter/llama", "d_regex/adapter/llama"}
	if got := models(); !slices.Equal(got, want) {
		t.Fatalf("models %v, want %v", got, want)
	}
	if got := adapters(); len(got) != 4 || got[0].GetName() != "a_qv" || got[0].GetState() != "device" || got[0].GetTier() != "device" || !strings.HasSuffix(got[0].GetPath(), "a_qv") {
		t.Fatalf("adapters %v", got)
	}

	// b_all_rslora's weights under a new name give b_all_rslora's reference tokens.
	path := filepath.Join(fixtureDir("llama"), "adapters", "b_all_rslora")
	if _, err := c.LoadAdapter(ctx, &loraplexv1.LoadAdapterRequest{Name: "mine", Path: path}); err != nil {
		t.Fatal(err)
	}
	if got := models(); !slices.Contains(got, "mine/adapter/llama") {
		t.Fatalf("after load: %v", got)
	}
	i := slices.IndexFunc(adapters(), func(a *loraplexv1.Adapter) bool { return a.GetName() == "mine" })
	if i < 0 || adapters()[i].GetPath() != path {
		t.Fatalf("after load: adapters %v", adapters())
	}
	var ref fixtureCase
	for _, x := range loadCases(t, "llama") {
		if x.Adapter == "b_all_rslora" {
			ref = x
			break
		}
	}
	st, err := c.Generate(ctx, &loraplexv1.GenerateRequest{Model: "mine", Prompt: tokenPrompt(ref.Prompt...), Params: &loraplexv1.SamplingParams{MaxTokens: int32(len(ref.Steps)), IgnoreEos: true}})
	if err != nil {
		t.Fatal(err)
	}
	got, _, _, err := collect(t, st)
	if err != nil || len(got) != len(ref.Steps) || got[0] != int32(ref.Steps[0].Token) || got[len(got)-1] != int32(ref.Steps[len(got)-1].Token) {
		t.Fatalf("generate with the loaded adapter: %v (%v)", got, err)
	}

	if _, err := c.UnloadAdapter(ctx, &loraplexv1.UnloadAdapterRequest{Name: "mine"}); err != nil {
		t.Fatal(err)
	}
	if got := models(); !slices.Equal(got, want) {
		t.Fatalf("after unload: %v", got)
	}
	wantCode(t, "generate with the unloaded adapter", generateErr(ctx, c, &loraplexv1.GenerateRequest{Model: "mine", Prompt: tokenPrompt(1)}), codes.NotFound)
}
