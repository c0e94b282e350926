package router

import (
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
)

// TestRouterFixturesCPU runs the PyTorch reference's router cases (bench/reference/
// router_reference.py: top-2, top-1 with BF16 gates, per-layer expert lists with ungated
// projections, null experts, per-layer temperature) on the CPU engine, all in one batch with the
// model's base and plain-adapter cases, prefill whole and chunked to 3 tokens. Every greedy
// token must match and every logit agree to 1e-3.
func TestRouterFixturesCPU(t *testing.T) {
	for _, name := range fixture.Models {
		t.Run(name, func(t *testing.T) {
			be := cpu.New(2)
			t.Cleanup(be.Close)
			fx, cfg, h := fixture.Open(t, name, be)
			rfx, err := fixture.LoadRouters(name)
			if err != nil {
				t.Fatal(err)
			}
			adapters := fixtureadapters.Upload(t, name, cfg, be)
			cases := append([]fixture.Case(nil), fx.Cases...)
			minMargin := 1e9
			for _, c := range rfx.Cases {
				if adapters[c.Adapter] == nil {
					adapters[c.Adapter] = routedAdapter(t, filepath.Join(fixture.RoutersRoot(), c.Router), c.Adapter, cfg, be, adapters)
				}
				if c.RouteMargin != nil {
					minMargin = min(minMargin, *c.RouteMargin)
				}
				cases = append(cases, c)
			}
			if len(rfx.Cases) < 5 {
				t.Fatalf("%d router cases, want at least 5", len(rfx.Cases))
			}
			for _, chunk := range []int{1 << 20, 3} {
				res, err := h.Run(cases, adapters, chunk, fixture.Tolerance{Abs: 1e-3, AllTokens: true})
				if err != nil {
					t.Fatalf("chunk %d: %v", chunk, err)
				}
				t.Logf("chunk %d: %d cases (%d routed), %d steps, worst logit diff %.2e; smallest route margin in the reference %.1e",
					chunk, len(cases), len(rfx.Cases), res.Steps, res.WorstDiff, minMargin)
			}
			routed := 0
			for _, a := range adapters {
				if a.Routing != nil {
					routed++
				}
			}
			if routed == 0 {
				t.Fatal("no routed case ran")
			}
		})
	}
}
