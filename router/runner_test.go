package router

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

// routedAdapter loads the bundle in dir, uploads its gates to be and resolves it against the
// uploaded adapters: the per-sequence "adapter" a routed request runs with.
func routedAdapter(t *testing.T, dir, name string, cfg *model.Config, be model.Backend, adapters map[string]*model.Adapter) *model.Adapter {
	t.Helper()
	b, err := Load(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Upload(be); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Free(be) })
	experts := make([]*model.Adapter, len(b.Experts()))
	for i, e := range b.Experts() {
		if experts[i] = adapters[e]; experts[i] == nil {
			t.Fatalf("expert %q is not a fixture adapter", e)
		}
	}
	rt, err := b.Routing(name, cfg, experts)
	if err != nil {
		t.Fatal(err)
	}
	return &model.Adapter{Name: name, Routing: rt}
}

// TestRunnerOneExpertRouterIsTheAdapter: a router whose only expert is adapter A, with a gate on
// every projection (k = 1, so weight 1), must give exactly A's logits; with a null expert and
// k = 2 as well (the null is dropped and A renormalised to 1). The fixture cases run in one
// batch with their plain adapters and the base model, prefill whole and chunked, so routed rows
// share steps with unrouted ones.
func TestRunnerOneExpertRouterIsTheAdapter(t *testing.T) {
	for _, name := range []string{"llama", "qwen3"} {
		t.Run(name, func(t *testing.T) {
			be := cpu.New(2)
			t.Cleanup(be.Close)
			fx, cfg, h := fixture.Open(t, name, be)
			adapters := fixtureadapters.Upload(t, name, cfg, be)
			rng := rand.New(rand.NewPCG(3, 4))
			var cases []fixture.Case
			for _, c := range fx.Cases {
				if c.Adapter == "" {
					cases = append(cases, c)
					continue
				}
				cases = append(cases, c)
				for _, variant := range []string{`"top_k":1`, `"top_k":2,"null_experts":1`} {
					js := fmt.Sprintf(`{"format":"loraplex.router/v1","experts":[%q],%s}`, c.Adapter, variant)
					rows := 1
					if variant != `"top_k":1` {
						rows = 2
					}
					dir := writeBundle(t, js, allGates(cfg, rng, func(int) int { return rows }))
					rname := "router-" + c.Adapter + "-" + fmt.Sprint(rows)
					if adapters[rname] == nil {
						adapters[rname] = routedAdapter(t, dir, rname, cfg, be, adapters)
					}
					rc := c
					rc.Adapter = rname
					cases = append(cases, rc)
				}
			}
			for _, chunk := range []int{1 << 20, 3} {
				res, err := h.Run(cases, adapters, chunk, fixture.Tolerance{Abs: 1e-3, AllTokens: true})
				if err != nil {
					t.Fatalf("chunk %d: %v", chunk, err)
				}
				t.Logf("chunk %d: %d cases, worst logit diff %.2e", chunk, len(cases), res.WorstDiff)
			}
			// The trace: one step with a base row, then a one-expert router's rows. Routed rows name
			// the only expert (0) on every layer; the base row has no choices (-1).
			ad := adapters["router-"+fixture.Adapters[0]+"-1"]
			s := &model.Step{Tokens: []int32{1, 2, 3}, Positions: []int32{0, 0, 1}, Slots: []int32{0, 4, 5},
				Seqs:      []model.SeqRows{{Start: 0, N: 1, Len: 1, Pages: []int32{0}}, {Start: 1, N: 2, Len: 2, Pages: []int32{1}}},
				LogitRows: []int32{0, 2}}
			if err := h.R.Forward(s, []*model.Adapter{nil, ad}, make([]float32, 2*cfg.VocabSize)); err != nil {
				t.Fatal(err)
			}
			for row, want := range []int32{-1, 0, 0} {
				tr := h.R.RouteTrace(row)
				if len(tr) != cfg.NumLayers {
					t.Fatalf("row %d: trace of %d layers, want %d", row, len(tr), cfg.NumLayers)
				}
				for l, id := range tr {
					if id != want {
						t.Errorf("row %d layer %d: traced expert %d, want %d", row, l, id, want)
					}
				}
			}
		})
	}
}
