package grpcapi_test

import (
	"slices"
	"testing"
	"time"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
)

// Usage.cached_tokens reports the prompt tokens the prefix cache served: none the first time a
// prompt runs, its full pages before the last token the second time, with the same tokens.
func TestGenerateUsageReportsCachedTokens(t *testing.T) {
	e := fixtureEngine(t, "llama", serve.Options{PageSize: 4})
	ts := startServer(t, e, grpcapi.Options{})
	ctx := ctxTimeout(t, 15*time.Second)
	var c fixtureCase
	for _, k := range loadCases(t, "llama") {
		if k.Adapter == "a_qv" && len(k.Prompt) == 13 {
			c = k
		}
	}
	want := make([]int32, len(c.Steps))
	for i, s := range c.Steps {
		want[i] = int32(s.Token)
	}
	for run, cached := range []int32{0, 12} {
		st, err := ts.client.Generate(ctx, &loraplexv1.GenerateRequest{Model: c.Adapter, Prompt: tokenPrompt(c.Prompt...),
			Params: &loraplexv1.SamplingParams{MaxTokens: int32(len(c.Steps)), IgnoreEos: true}})
		if err != nil {
			t.Fatal(err)
		}
		got, _, last, err := collect(t, st)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) || last.GetUsage().GetCachedTokens() != cached {
			t.Fatalf("run %d: tokens %v usage %v, want %v and %d cached tokens", run, got, last.GetUsage(), want, cached)
		}
	}
}
