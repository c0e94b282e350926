package router

import (
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

// groupingBackend is the CPU backend routing the way the forward pass asks a device router to:
// RouteLoRA reads the logits back, routes each row with model.Route, adds each choice with one
// LoRA call and writes the trace; the products of one input come from one call (so the gate
// logits ride with the base products, as on a GPU), and RouteLoRAGroup, counted, is its
// members' RouteLoRA calls.
type groupingBackend struct {
	*cpu.Backend
	groups  int  // grouped calls taken (or, declining, offered)
	decline bool // refuse every grouped call: the forward pass routes each projection itself
	fold    bool // take RoutedFoldedProducts calls (else decline them)
	folds   int  // routed folds taken
}

// RoutedFoldedProducts composes what the forward pass would do instead: the products, the
// biases, the gate logits (computed here), then RouteLoRA.
func (g *groupingBackend) RoutedFoldedProducts(outs []model.Tensor, x model.Tensor, ws, biases []model.Tensor, rps []*model.RoutedProj,
	trace model.Tensor, traced, layer int) bool {
	if !g.fold {
		return false
	}
	g.folds++
	for i := range outs {
		g.MatMul(outs[i], x, ws[i])
		if biases[i].Rows > 0 {
			g.AddBias(outs[i], biases[i])
		}
	}
	for i, rp := range rps {
		lg := g.Alloc(x.Rows, rp.Gate.Rows)
		g.MatMul(lg, x, rp.Gate)
		tr := model.Tensor{}
		if i == traced {
			tr = trace
		}
		g.RouteLoRA(outs[i], x, lg, 0, x.Rows, rp, tr, layer)
		g.Free(lg)
	}
	return true
}

func (g *groupingBackend) MatMulShared(outs []model.Tensor, x model.Tensor, ws []model.Tensor) bool {
	for i := range outs {
		g.MatMul(outs[i], x, ws[i])
	}
	return true
}

func (g *groupingBackend) RouteLoRA(out, x, logits model.Tensor, start, n int, rp *model.RoutedProj, trace model.Tensor, layer int) {
	rows := rp.Gate.Rows
	host := make([]float32, n*rows)
	if err := g.Read(logits, host); err != nil {
		panic(err)
	}
	var tr []float32
	if trace.Rows > 0 {
		tr = make([]float32, n*trace.Cols)
		if err := g.Read(trace.Slice(start, n), tr); err != nil {
			panic(err)
		}
	}
	var cs []model.Choice
	for i := 0; i < n; i++ {
		cs = model.Route(host[i*rows:(i+1)*rows], rp.TopK, rp.Temperature, rp.Nulls, cs)
		if tr != nil {
			id := float32(-1)
			if len(cs) > 0 {
				id = float32(rp.IDs[cs[0].Expert])
			}
			tr[i*trace.Cols+layer] = id
		}
		for _, c := range cs {
			if m := rp.Experts[c.Expert]; m != nil && c.Weight != 0 {
				g.LoRA(out, x, []model.LoRASeg{{Start: start + i, N: 1, A: m.A, B: m.B, Scale: c.Weight * m.Scale}})
			}
		}
	}
	if tr != nil {
		if err := g.Write(trace.Slice(start, n), tr); err != nil {
			panic(err)
		}
	}
}

func (g *groupingBackend) ReleaseRouting(*model.Routing) {}

func (g *groupingBackend) RouteLoRAGroup(outs []model.Tensor, x model.Tensor, logits []model.Tensor, start, n int, rps []*model.RoutedProj,
	trace model.Tensor, traced, layer int) bool {
	g.groups++
	if g.decline {
		return false
	}
	for i := range outs {
		tr := model.Tensor{}
		if i == traced {
			tr = trace
		}
		g.RouteLoRA(outs[i], x, logits[i], start, n, rps[i], tr, layer)
	}
	return true
}

// The forward pass routes the projections of one input (q/k/v, gate/up) in one grouped call
// where a device router takes it (model.DeviceGroupRouter) and every one of them is routed for
// the same rows: a batch of one router's reference cases, prefill whole and chunked, decodes
// the reference's greedy tokens with logits within 1e-3, as TestRouterFixturesCPU does on the
// host path, and the grouped calls are used; a backend that declines every group gets the same
// (each projection routed after the group's biases, which qwen2's q/k/v have), and so does one
// that folds the routed projections into the products' call (model.RoutedFolder), which the
// steps of this one-router batch all take.
func TestRouterFixturesDeviceGroups(t *testing.T) {
	for _, c := range []struct {
		name          string
		decline, fold bool
	}{{"grouped", false, false}, {"declined", true, false}, {"folded", false, true}} {
		t.Run(c.name, func(t *testing.T) { routerFixturesDeviceGroups(t, c.decline, c.fold) })
	}
}

func routerFixturesDeviceGroups(t *testing.T, decline, fold bool) {
	for _, name := range fixture.Models {
		t.Run(name, func(t *testing.T) {
			be := &groupingBackend{Backend: cpu.New(2), decline: decline, fold: fold}
			t.Cleanup(be.Close)
			_, cfg, h := fixture.Open(t, name, be)
			rfx, err := fixture.LoadRouters(name)
			if err != nil {
				t.Fatal(err)
			}
			adapters := fixtureadapters.Upload(t, name, cfg, be)
			var cases []fixture.Case
			for _, c := range rfx.Cases {
				if c.Router != rfx.Cases[0].Router {
					continue
				}
				if adapters[c.Adapter] == nil {
					adapters[c.Adapter] = routedAdapter(t, filepath.Join(fixture.RoutersRoot(), c.Router), c.Adapter, cfg, be, adapters)
				}
				cases = append(cases, c)
			}
			for _, chunk := range []int{1 << 20, 3} {
				res, err := h.Run(cases, adapters, chunk, fixture.Tolerance{Abs: 1e-3, AllTokens: true})
				if err != nil {
					t.Fatalf("chunk %d: %v", chunk, err)
				}
				t.Logf("chunk %d: %d routed cases of %s, %d steps, worst logit diff %.2e", chunk, len(cases), rfx.Cases[0].Router, res.Steps, res.WorstDiff)
			}
			if fold && be.folds == 0 {
				t.Fatal("no step folded its routed projections into the products")
			}
			if !fold && be.groups == 0 {
				t.Fatal("no step offered a projection group to one call")
			}
		})
	}
}
