package router

import (
	"path/filepath"
	"reflect"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

// gateCounter is the CPU backend counting the router-gate products (told apart by their
// storage) it makes inside MatMulShared calls and alone through MatMul; with decline set it
// refuses every MatMulShared call, so the runner makes each product alone.
type gateCounter struct {
	*cpu.Backend
	decline       bool
	gates         map[storage]bool
	shared, alone int
}

type storage struct {
	p   uintptr
	off int
}

func storageOf(t model.Tensor) storage { return storage{reflect.ValueOf(t.Buf).Pointer(), t.Off} }

func (g *gateCounter) MatMul(out, x, w model.Tensor) {
	if g.gates[storageOf(w)] {
		g.alone++
	}
	g.Backend.MatMul(out, x, w)
}

func (g *gateCounter) MatMulShared(outs []model.Tensor, x model.Tensor, ws []model.Tensor) bool {
	if g.decline {
		return false
	}
	for _, w := range ws {
		if g.gates[storageOf(w)] {
			g.shared++
		}
	}
	return g.Backend.MatMulShared(outs, x, ws)
}

// A routed step computes each routed projection's gate logits in the call that makes the base
// products of the projections sharing its input (q/k/v, gate/up, o, down: no gate GEMM of its
// own) when one router serves every routed row of the step, and the run against the reference
// is that of a backend that makes every product alone to the last bit of its worst
// differences; when routers differ within a step, each group
// of rows keeps its own gate GEMM. Both pass the PyTorch reference's router cases.
func TestRoutedGatesRideOnTheBaseProducts(t *testing.T) {
	const name = "llama"
	rfx, err := fixture.LoadRouters(name)
	if err != nil {
		t.Fatal(err)
	}
	first := rfx.Cases[0].Router
	var one, mixed []fixture.Case
	for _, c := range rfx.Cases {
		if c.Router == first {
			one = append(one, c)
		}
		mixed = append(mixed, c)
	}
	if len(one) == len(mixed) {
		t.Fatalf("all %d router cases use one router: the mixed run would test nothing", len(mixed))
	}
	run := func(cases []fixture.Case, decline bool) (fixture.Result, *gateCounter) {
		g := &gateCounter{Backend: cpu.New(2), decline: decline, gates: map[storage]bool{}}
		t.Cleanup(g.Close)
		fx, cfg, h := fixture.Open(t, name, g)
		adapters := fixtureadapters.Upload(t, name, cfg, g)
		all := append([]fixture.Case(nil), fx.Cases...)
		for _, c := range cases {
			if adapters[c.Adapter] == nil {
				a := routedAdapter(t, filepath.Join(fixture.RoutersRoot(), c.Router), c.Adapter, cfg, g, adapters)
				adapters[c.Adapter] = a
				for _, layer := range a.Routing.Layers {
					for _, rp := range layer {
						if rp != nil {
							g.gates[storageOf(rp.Gate)] = true
						}
					}
				}
			}
			all = append(all, c)
		}
		res, err := h.Run(all, adapters, 3, fixture.Tolerance{Abs: 1e-3, AllTokens: true})
		if err != nil {
			t.Fatal(err)
		}
		return res, g
	}
	got, sharing := run(one, false)
	want, alone := run(one, true)
	if got != want {
		t.Fatalf("gate logits beside the base products: %+v; each product alone: %+v", got, want)
	}
	if sharing.alone != 0 || sharing.shared == 0 || alone.alone == 0 {
		t.Fatalf("one router: %d gate products in shared calls, %d alone (want all shared); declining backend: %d alone",
			sharing.shared, sharing.alone, alone.alone)
	}
	_, mix := run(mixed, false)
	if mix.alone == 0 {
		t.Fatalf("routers differing within steps: no gate GEMM of its own (%d shared)", mix.shared)
	}
}
