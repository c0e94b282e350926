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
// storage) it makes inside MatMulShared calls, inside SiLUMulMatMul calls and alone through
// MatMul; with decline set it refuses every MatMulShared call, so the runner makes each product
// alone; with silu set it makes SwiGLU and the products reading it in one call (as CUDA's
// SiLUMulMatMuler, from the CPU's ops), and with keep the norm and the products reading it
// (NormKeeper), else it declines those.
type gateCounter struct {
	*cpu.Backend
	decline, silu, keep           bool
	gates                         map[storage]bool
	shared, alone, withSiLU, kept int
	h                             model.Tensor // the normed rows NormKeptMatMulShared last kept
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

func (g *gateCounter) SiLUMulMatMul(outs []model.Tensor, act, gate, up model.Tensor, ws []model.Tensor) bool {
	if !g.silu {
		return false
	}
	g.SiluMul(act, gate, up)
	for i, w := range ws {
		if g.gates[storageOf(w)] {
			g.withSiLU++
		}
		g.Backend.MatMul(outs[i], act, w)
	}
	return true
}

func (g *gateCounter) NormKeptMatMulShared(outs []model.Tensor, in model.NormedInput, ws []model.Tensor) (model.Tensor, bool) {
	if !g.keep {
		return model.Tensor{}, false
	}
	if g.h.Rows > 0 {
		g.Free(g.h) // valid until this next call, as NormKeeper says
	}
	h := g.Alloc(in.X.Rows, in.X.Cols)
	g.h = h
	if in.Delta.Rows == 0 {
		g.RMSNorm(h, in.X, in.Weight, in.Eps)
	} else {
		x := make([]float32, in.X.Rows*in.X.Cols)
		if err := g.Read(in.X, x); err != nil {
			panic(err)
		}
		if err := g.Write(in.Next, x); err != nil {
			panic(err)
		}
		g.AddRMSNorm(in.Next, in.Delta, h, in.Weight, in.Eps)
	}
	for i, w := range ws {
		if g.gates[storageOf(w)] {
			g.kept++
		}
		g.Backend.MatMul(outs[i], h, w)
	}
	return h, true
}

// A routed step computes each routed projection's gate logits in the call that makes the base
// products of the projections sharing its input (q/k/v, gate/up, o, down: no gate GEMM of its
// own) when one router serves every routed row of the step, and the run against the reference
// is that of a backend that makes every product alone to the last bit of its worst
// differences; where the backend makes SwiGLU and the down product in one call
// (SiLUMulMatMuler), the down gate's logits ride that call, and where it folds the norm into
// the products and keeps the normed rows for the router shrinks (NormKeeper), q/k/v's and
// gate/up's ride that one, each to the same last bit; when routers differ within a step, each
// group of rows keeps its own gate GEMM. All pass the PyTorch reference's router cases.
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
	run := func(cases []fixture.Case, decline, silu, keep bool) (fixture.Result, *gateCounter) {
		g := &gateCounter{Backend: cpu.New(2), decline: decline, silu: silu, keep: keep, gates: map[storage]bool{}}
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
	got, sharing := run(one, false, false, false)
	want, alone := run(one, true, false, false)
	if got != want {
		t.Fatalf("gate logits beside the base products: %+v; each product alone: %+v", got, want)
	}
	if sharing.alone != 0 || sharing.shared == 0 || alone.alone == 0 {
		t.Fatalf("one router: %d gate products in shared calls, %d alone (want all shared); declining backend: %d alone",
			sharing.shared, sharing.alone, alone.alone)
	}
	withSwiGLU, silu := run(one, false, true, false)
	if withSwiGLU != want {
		t.Fatalf("down gates beside SwiGLU's products: %+v; each product alone: %+v", withSwiGLU, want)
	}
	if silu.alone != 0 || silu.withSiLU == 0 || silu.shared+silu.withSiLU != sharing.shared {
		t.Fatalf("one router with SwiGLU's products: %d gate products in its calls, %d in shared calls, %d alone; %d without",
			silu.withSiLU, silu.shared, silu.alone, sharing.shared)
	}
	withNorms, keeping := run(one, false, true, true)
	if withNorms != want {
		t.Fatalf("gates beside the kept norms' products: %+v; each product alone: %+v", withNorms, want)
	}
	if keeping.alone != 0 || keeping.kept == 0 || keeping.withSiLU == 0 || keeping.shared+keeping.kept+keeping.withSiLU != sharing.shared {
		t.Fatalf("one router with the norms kept: %d gate products in their calls, %d in SwiGLU's, %d in shared calls, %d alone; %d without",
			keeping.kept, keeping.withSiLU, keeping.shared, keeping.alone, sharing.shared)
	}
	_, mix := run(mixed, false, false, false)
	if mix.alone == 0 {
		t.Fatalf("routers differing within steps: no gate GEMM of its own (%d shared)", mix.shared)
	}
}

// A layer's gates of one input width go up as one tensor, their rows end to end in projection
// order, and each Gate.T is a view of its own rows holding its weights: the layout that lets a
// backend batch the products of q/k/v's gates (and gate/up's). Free releases what Upload put up
// and leaves no gate uploaded.
func TestUploadGatesLaysOneWidthEndToEnd(t *testing.T) {
	be := cpu.New(1)
	defer be.Close()
	gate := func(p model.Proj, rows, cols int) *Gate {
		w := make([]float32, rows*cols)
		for i := range w {
			w[i] = float32(int(p)*1000 + i)
		}
		return &Gate{Name: p.String(), Proj: p, Rows: rows, Cols: cols, W: w}
	}
	gs := []*Gate{gate(model.ProjQ, 3, 8), gate(model.ProjV, 3, 8), gate(model.ProjUp, 3, 8), gate(model.ProjDown, 3, 16)}
	ups, err := UploadGates(be, gs)
	if err != nil {
		t.Fatal(err)
	}
	if len(ups) != 2 || ups[0].Rows != 9 || ups[0].Cols != 8 || ups[1].Rows != 3 || ups[1].Cols != 16 {
		t.Fatalf("uploaded %d tensors (%v), want 9x8 and 3x16", len(ups), ups)
	}
	for i, g := range gs {
		parent, at := ups[0], 3*i
		if g.Cols == 16 {
			parent, at = ups[1], 0
		}
		if storageOf(g.T) != (storage{reflect.ValueOf(parent.Buf).Pointer(), parent.Off + at*g.Cols}) || g.T.Rows != g.Rows || g.T.Cols != g.Cols {
			t.Fatalf("gate %s is %dx%d at offset %d of its tensor, want rows %d..", g.Name, g.T.Rows, g.T.Cols, g.T.Off, at)
		}
		got := make([]float32, g.Rows*g.Cols)
		if err := be.Read(g.T, got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, g.W) {
			t.Fatalf("gate %s reads %v, want %v", g.Name, got[:4], g.W[:4])
		}
	}

	b := &Bundle{layers: []Layer{{}}}
	for _, g := range gs {
		b.layers[0].Gates[g.Proj] = g
	}
	if err := b.Upload(be); err != nil {
		t.Fatal(err)
	}
	if len(b.uploads) != 2 {
		t.Fatalf("Upload kept %d tensors to free, want 2", len(b.uploads))
	}
	b.Free(be)
	for _, g := range gs {
		if g.T.Rows != 0 {
			t.Fatalf("gate %s is still uploaded after Free", g.Name)
		}
	}
	if len(b.uploads) != 0 {
		t.Fatal("Free left tensors to free")
	}
}
