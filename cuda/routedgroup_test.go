//go:build cuda

package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/model"
)

// The grouped routed launches (LORAPLEX_ROUTED_GROUP) give each member what its own RouteLoRA
// gives: the same trace (the traced member's, the others' untouched) and deltas within 1e-5 of
// the largest output (the group's split count may be another than a member's own), bit for bit
// from one call to the next; for q/k/v-like members of different widths, experts, ranks, k and
// nulls, one and several rows; with the routing shrink by rows (LORAPLEX_ROUTED_ROWS) as with
// the split one. The group declines with the switch off, with a member no expert adapts
// (RouteLoRA writes only its trace there), with a gate past the route kernel's limits and in
// deterministic mode, leaving the outputs as they were.
func TestRoutedGroup(t *testing.T) {
	p := pair{cpu.New(0), newGPU(t)}
	defer p.c.Close()
	p.g.SetRoutedWide(true)
	p.g.SetRoutedFused(true)
	p.g.SetRoutedExpertMajor(false, -1) // its own test's (TestRoutedExpertMajor)
	r := rand.New(rand.NewPCG(61, 62))
	const in, layers, layer = 256, 4, 1
	ranks := []int{4, 16, 8, 1, 32, 7}
	for _, byRows := range []bool{false, true} {
		p.g.SetRoutedRows(byRows, 0) // every call, however few its rows
		tookRows := p.g.RoutedRowsCount()
		for ci, group := range [][]routeCase{
			{{experts: 4, nulls: 0, k: 2, T: 1}, {experts: 5, nulls: 1, k: 3, T: 2, nilAt: []int{2}}, {experts: 3, nulls: 0, k: 1, T: 0.7}},
			{{experts: 28, nulls: 0, k: 2, T: 1}, {experts: 28, nulls: 0, k: 2, T: 1}},
			{{experts: 60, nulls: 4, k: 8, T: 0.9, nilAt: []int{0, 17}}, {experts: 2, nulls: 3, k: 2, T: 1.3}},
		} {
			groupCase(t, p, r, ranks, ci, group, in, layers, layer, byRows)
		}
		if byRows && p.g.RoutedRowsCount() == tookRows {
			t.Fatal("no routed call took the routing shrink by rows")
		}
	}
	p.g.SetRoutedRows(false, -1)
	t.Run("declines", func(t *testing.T) {
		p.g.SetRoutedGroup(true)
		x := p.g.Alloc(1, in)
		mk := func(rc routeCase, out int) (*model.RoutedProj, model.Tensor, model.Tensor) {
			rows := rc.experts + rc.nulls
			_, eg, ids := routeExperts(t, p, r, rc, ranks, in, out, 7000)
			lg := p.g.Alloc(1, rows)
			if err := p.g.Write(lg, routeLogits(r, 1, rows, rc.nulls, rc.k)); err != nil {
				t.Fatal(err)
			}
			return &model.RoutedProj{Gate: p.g.Alloc(rows, in), TopK: rc.k, Temperature: rc.T, Nulls: rc.nulls, Experts: eg, IDs: ids}, lg, p.g.Alloc(1, out)
		}
		ok, okLg, okOut := mk(routeCase{experts: 4, k: 2, T: 1}, 64)
		if err := p.g.Write(okOut, randFloats(r, 64)); err != nil {
			t.Fatal(err)
		}
		was := read(t, p.g, okOut)
		var rps []*model.RoutedProj
		for _, bad := range []routeCase{
			{experts: 3, nulls: 1, k: 2, T: 1, nilAt: []int{0, 1, 2}}, // no expert adapts it
			{experts: 70, nulls: 2, k: 10, T: 1},                      // past the route kernel's limits
			{experts: 4, k: 2, T: 1},                                  // fine, but in deterministic mode
		} {
			rp, lg, out := mk(bad, 32)
			rps = append(rps, rp)
			det := bad.experts == 4
			p.g.SetBatchInvariant(det)
			if p.g.RouteLoRAGroup([]model.Tensor{okOut, out}, x, []model.Tensor{okLg, lg}, 0, 1, []*model.RoutedProj{ok, rp}, model.Tensor{}, -1, layer) {
				t.Fatalf("the grouped routed call took a member %+v (deterministic mode %v)", bad, det)
			}
			p.g.SetBatchInvariant(false)
			for i, v := range read(t, p.g, okOut) {
				if math.Float32bits(v) != math.Float32bits(was[i]) {
					t.Fatalf("a declined grouped call changed an output: element %d %v, was %v", i, v, was[i])
				}
			}
		}
		var l0 [model.NumProj]*model.RoutedProj
		l0[0] = ok
		copy(l0[1:], rps)
		p.g.ReleaseRouting(&model.Routing{Layers: [][model.NumProj]*model.RoutedProj{l0}})
		if err := p.g.Err(); err != nil {
			t.Fatal(err)
		}
	})
}

// With the grouped routed launches on, a batch of one router's routed fixture cases takes them
// (q/k/v and gate/up, prefill and decode, recorded and replayed), and device routing still
// matches host routing: identical traces, logits within float rounding (deviceRoutingMatchesHost).
func TestRoutedGroupMatchesHostCUDA(t *testing.T) {
	b := newGPU(t)
	b.SetRoutedWide(true)
	b.SetRoutedFused(true)
	b.SetRoutedGroup(true)
	b.SetRoutedExpertMajor(false, -1)
	before := b.RoutedGroupCount()
	deviceRoutingMatchesHost(t, b, true)
	if b.RoutedGroupCount() == before {
		t.Fatal("no routed step took the grouped launches")
	}
}

// A routed fold (LORAPLEX_ROUTED_FOLD) gives what the products, the biases, the gate GEMMs and
// RouteLoRA give: the same trace and outputs within 1e-5 of the largest (the experts' shrinks
// summed in the GEMV's order), for one to three members of different widths, experts, ranks
// (some past a table's largest, whose columns are zero), k and nulls, with a bias, one row and
// three (the GEMV's multi-row kernels, under programmatic dependent launch). It declines
// with the switch off, beyond the GEMV rows, in deterministic mode and past the route kernel's
// limits, leaving the outputs as they were.
func TestRoutedFold(t *testing.T) {
	p := pair{cpu.New(0), newGPU(t)}
	defer p.c.Close()
	g := p.g
	g.SetRoutedWide(true)
	g.SetRoutedFused(true)
	r := rand.New(rand.NewPCG(63, 64))
	const in, layers, layer, traced = 256, 4, 2, 0
	ranks := []int{4, 16, 8, 1, 32, 7}
	for ci, group := range [][]routeCase{
		{{experts: 28, k: 2, T: 1}},
		{{experts: 4, k: 2, T: 1}, {experts: 5, nulls: 1, k: 3, T: 2, nilAt: []int{2}}, {experts: 3, k: 1, T: 0.7}},
		{{experts: 60, nulls: 4, k: 8, T: 0.9, nilAt: []int{0, 17}}, {experts: 2, nulls: 3, k: 2, T: 1.3}},
	} {
		for _, n := range []int{1, 3} {
			t.Run(fmt.Sprintf("group%d_rows%d", ci, n), func(t *testing.T) {
				// Three rows take the GEMV's multi-row kernels, under programmatic dependent launch.
				g.SetGEMVRows(n)
				if n > 1 {
					g.SetPDL(cuda.PDLOn)
					defer g.SetPDL(cuda.PDLOff)
				}
				defer g.SetGEMVRows(1)
				widths := []int{192, 64, 96}[:len(group)]
				_, x := p.tensor(t, n, in, randFloats(r, n*in))
				var rps []*model.RoutedProj
				var ws, biases, alone, folded []model.Tensor
				var bases [][]float32
				for m, rc := range group {
					rows := rc.experts + rc.nulls
					_, eg, ids := routeExperts(t, p, r, rc, ranks, in, widths[m], 2000*ci+100*m)
					_, gate := p.upload(t, hostBF16(r, rows, in, 1/math.Sqrt(in)))
					rps = append(rps, &model.RoutedProj{Gate: gate, TopK: rc.k, Temperature: rc.T, Nulls: rc.nulls, Experts: eg, IDs: ids})
					_, w := p.upload(t, hostBF16(r, widths[m], in, 1/math.Sqrt(in)))
					bias := model.Tensor{}
					if m == 0 {
						_, bias = p.tensor(t, 1, widths[m], randFloats(r, widths[m]))
					}
					base := randFloats(r, n*widths[m])
					_, a := p.tensor(t, n, widths[m], base)
					_, f := p.tensor(t, n, widths[m], base)
					ws, biases, alone, folded, bases = append(ws, w), append(biases, bias), append(alone, a), append(folded, f), append(bases, base)
				}
				sentinel := make([]float32, n*layers)
				for i := range sentinel {
					sentinel[i] = 99
				}
				_, trA := p.tensor(t, n, layers, sentinel)
				_, trF := p.tensor(t, n, layers, sentinel)
				// The separate ops.
				for m, rp := range rps {
					g.MatMul(alone[m], x, ws[m])
					if biases[m].Rows > 0 {
						g.AddBias(alone[m], biases[m])
					}
					lg := g.Alloc(n, rp.Gate.Rows)
					g.MatMul(lg, x, rp.Gate)
					tr := model.Tensor{}
					if m == traced {
						tr = trA
					}
					g.RouteLoRA(alone[m], x, lg, 0, n, rp, tr, layer)
				}
				fold := func() bool { return g.RoutedFoldedProducts(folded, x, ws, biases, rps, trF, traced, layer) }
				untouched := func(what string) {
					for m := range folded {
						for i, v := range read(t, g, folded[m]) {
							if math.Float32bits(v) != math.Float32bits(bases[m][i]) {
								t.Fatalf("%s: a declined fold changed member %d element %d", what, m, i)
							}
						}
					}
				}
				g.SetRoutedFold(false)
				if fold() {
					t.Fatal("a routed fold ran with its switch off")
				}
				g.SetRoutedFold(true)
				g.SetBatchInvariant(true)
				if fold() {
					t.Fatal("a routed fold ran in deterministic mode")
				}
				g.SetBatchInvariant(false)
				g.SetGEMVRows(n - 1)
				if fold() {
					t.Fatal("a routed fold took rows beyond the GEMV rows")
				}
				g.SetGEMVRows(n)
				untouched("declines")
				before := g.RoutedFoldCount()
				if !fold() || g.RoutedFoldCount() != before+1 {
					t.Fatal("the routed fold declined (or did not count) members the route kernel takes")
				}
				for m := range group {
					want, got := read(t, g, alone[m]), read(t, g, folded[m])
					var scale, worst float64
					for i := range want {
						scale = max(scale, math.Abs(float64(want[i])))
						worst = max(worst, math.Abs(float64(got[i]-want[i])))
					}
					if !(worst <= 1e-5*scale) {
						t.Fatalf("member %d: the fold differs from the separate ops by %.3g (max %.3g)", m, worst, scale)
					}
				}
				if a, f := read(t, g, trA), read(t, g, trF); fmt.Sprint(a) != fmt.Sprint(f) || a[layer] == 99 {
					t.Fatalf("trace: folded %v, separate %v", f, a)
				}
				if err := g.Err(); err != nil {
					t.Fatal(err)
				}
				var l0 [model.NumProj]*model.RoutedProj
				copy(l0[:], rps)
				g.ReleaseRouting(&model.Routing{Layers: [][model.NumProj]*model.RoutedProj{l0}})
			})
		}
	}
	t.Run("past the route kernel's limits", func(t *testing.T) {
		g.SetRoutedFold(true)
		rc := routeCase{experts: 70, nulls: 2, k: 10, T: 1}
		_, eg, ids := routeExperts(t, p, r, rc, ranks, in, 32, 9000)
		_, gate := p.upload(t, hostBF16(r, 72, in, 1/math.Sqrt(in)))
		_, w := p.upload(t, hostBF16(r, 32, in, 1/math.Sqrt(in)))
		rp := &model.RoutedProj{Gate: gate, TopK: rc.k, Temperature: rc.T, Nulls: rc.nulls, Experts: eg, IDs: ids}
		if g.RoutedFoldedProducts([]model.Tensor{g.Alloc(1, 32)}, g.Alloc(1, in), []model.Tensor{w}, []model.Tensor{{}}, []*model.RoutedProj{rp}, model.Tensor{}, -1, layer) {
			t.Fatal("a routed fold took a gate past the route kernel's limits")
		}
	})
}

// With the routed fold on (and the GEMV taking the one-router batch's few-row decode steps), the
// routed fixture cases still route on the device exactly as on the host: identical traces,
// logits within float rounding (deviceRoutingMatchesHost), and the decode steps fold.
func TestRoutedFoldMatchesHostCUDA(t *testing.T) {
	b := newGPU(t)
	b.SetRoutedWide(true)
	b.SetRoutedFused(true)
	b.SetRoutedFold(true)
	b.SetGEMVRows(8)
	before := b.RoutedFoldCount()
	deviceRoutingMatchesHost(t, b, true)
	if b.RoutedFoldCount() == before {
		t.Fatal("no routed step folded")
	}
}

// The expert-major routed launches (LORAPLEX_ROUTED_EXPERT_MAJOR) give what the row-major ones
// give: the same trace and deltas within 1e-5 of the largest output (the shrink splits the input
// its own way), bit for bit from one call to the next, for a group of three members (one listing
// an expert twice, whose rows must get its delta once; one of three choices a row where the
// others make two) and for one member alone (RouteLoRA). They
// are taken where the step's choices average two an expert (64 rows, top-2 of 28; 160 rows, whose
// logits the plan reads where they lie), not at 8 rows.
func TestRoutedExpertMajor(t *testing.T) {
	p := pair{cpu.New(0), newGPU(t)}
	defer p.c.Close()
	g := p.g
	g.SetRoutedWide(true)
	g.SetRoutedFused(true)
	g.SetRoutedGroup(true)
	defer g.SetRoutedExpertMajor(false, -1)
	r := rand.New(rand.NewPCG(65, 66))
	// An input of 9,216 splits into 9 slices expert-major and 8 row-major at 64 rows.
	const in, layers, layer, traced = 9216, 4, 3, 1
	ranks := []int{8, 16, 4, 8, 7}
	group := []routeCase{{experts: 28, k: 2, T: 1}, {experts: 28, k: 2, T: 1}, {experts: 4, nulls: 1, k: 3, T: 0.8}}
	widths := []int{640, 128, 96}
	for _, n := range []int{64, 160, 8} {
		t.Run(fmt.Sprintf("rows%d", n), func(t *testing.T) {
			_, x := p.tensor(t, n, in, randFloats(r, n*in))
			var rps []*model.RoutedProj
			var lgs []model.Tensor
			var bases [][]float32
			for m, rc := range group {
				rows := rc.experts + rc.nulls
				_, eg, ids := routeExperts(t, p, r, rc, ranks, in, widths[m], 3000*m)
				if m == 1 {
					eg[5] = eg[3] // one adapter listed twice
				}
				rps = append(rps, &model.RoutedProj{Gate: g.Alloc(rows, in), TopK: rc.k, Temperature: rc.T, Nulls: rc.nulls, Experts: eg, IDs: ids})
				lg := g.Alloc(n, rows)
				logits := routeLogits(r, n, rows, rc.nulls, rc.k)
				if m == 1 {
					for i := 0; i < n; i += 3 { // make rows choose the listed-twice adapter under both indices
						logits[i*rows+3], logits[i*rows+5] = 50, 49
					}
				}
				if err := g.Write(lg, logits); err != nil {
					t.Fatal(err)
				}
				lgs, bases = append(lgs, lg), append(bases, randFloats(r, n*widths[m]))
			}
			sentinel := make([]float32, n*layers)
			for i := range sentinel {
				sentinel[i] = 99
			}
			// run makes the group's deltas (or member 0's alone, through RouteLoRA) on fresh outputs.
			run := func(em, alone bool) ([][]float32, []float32) {
				g.SetRoutedExpertMajor(em, -1)
				var outs []model.Tensor
				for m := range group {
					_, o := p.tensor(t, n, widths[m], bases[m])
					outs = append(outs, o)
				}
				_, tr := p.tensor(t, n, layers, sentinel)
				if alone {
					g.RouteLoRA(outs[0], x, lgs[0], 0, n, rps[0], tr, layer)
				} else if !g.RouteLoRAGroup(outs, x, lgs, 0, n, rps, tr, traced, layer) {
					t.Fatal("the routed group declined")
				}
				var got [][]float32
				for m := range group {
					got = append(got, read(t, g, outs[m]))
				}
				return got, read(t, g, tr)
			}
			for _, alone := range []bool{false, true} {
				rowMajor, trR := run(false, alone)
				before := g.RoutedExpertMajorCount()
				em, trE := run(true, alone)
				took := g.RoutedExpertMajorCount() - before
				if want := map[bool]int{true: 1, false: 0}[n >= 64]; took != want {
					t.Fatalf("alone %v: the expert-major launches took %d calls, want %d", alone, took, want)
				}
				again, _ := run(true, alone)
				for m := range group {
					var scale, worst float64
					for i := range rowMajor[m] {
						scale = max(scale, math.Abs(float64(rowMajor[m][i])))
						worst = max(worst, math.Abs(float64(em[m][i]-rowMajor[m][i])))
						if math.Float32bits(em[m][i]) != math.Float32bits(again[m][i]) {
							t.Fatalf("alone %v member %d element %d: %v, then %v", alone, m, i, em[m][i], again[m][i])
						}
					}
					if !(worst <= 1e-5*scale) {
						t.Fatalf("alone %v member %d: expert-major deltas differ from row-major by %.3g (max %.3g)", alone, m, worst, scale)
					}
				}
				if fmt.Sprint(trR) != fmt.Sprint(trE) {
					t.Fatalf("alone %v: trace expert-major %v, row-major %v", alone, trE, trR)
				}
			}
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
			var l0 [model.NumProj]*model.RoutedProj
			copy(l0[:], rps)
			g.ReleaseRouting(&model.Routing{Layers: [][model.NumProj]*model.RoutedProj{l0}})
		})
	}
}

// groupCase is one group of TestRoutedGroup at one and five rows.
func groupCase(t *testing.T, p pair, r *rand.Rand, ranks []int, ci int, group []routeCase, in, layers, layer int, byRows bool) {
	for _, n := range []int{1, 5} {
		t.Run(fmt.Sprintf("group%d_rows%d_byrows%v", ci, n, byRows), func(t *testing.T) {
			const start, total = 2, 9
			outs := []int{192, 64, 96}[:len(group)]
			_, xg := p.tensor(t, total, in, randFloats(r, total*in))
			var rps []*model.RoutedProj
			var lgs, alone, grouped []model.Tensor
			var bases [][]float32
			for m, rc := range group {
				rows := rc.experts + rc.nulls
				_, eg, ids := routeExperts(t, p, r, rc, ranks, in, outs[m], 1000*ci+100*m)
				rps = append(rps, &model.RoutedProj{Gate: p.g.Alloc(rows, in), TopK: rc.k, Temperature: rc.T, Nulls: rc.nulls, Experts: eg, IDs: ids})
				lg := p.g.Alloc(n, rows)
				if err := p.g.Write(lg, routeLogits(r, n, rows, rc.nulls, rc.k)); err != nil {
					t.Fatal(err)
				}
				base := randFloats(r, total*outs[m])
				_, a := p.tensor(t, total, outs[m], base)
				_, g := p.tensor(t, total, outs[m], base)
				lgs, alone, grouped, bases = append(lgs, lg), append(alone, a), append(grouped, g), append(bases, base)
			}
			sentinel := make([]float32, total*layers)
			for i := range sentinel {
				sentinel[i] = 99
			}
			_, trA := p.tensor(t, total, layers, sentinel)
			_, trG := p.tensor(t, total, layers, sentinel)
			const traced = 1
			// Each member alone on the split launch, so the rows launch is held to another kernel.
			p.g.SetRoutedRows(false, -1)
			for m := range group {
				tr := model.Tensor{}
				if m == traced {
					tr = trA
				}
				p.g.RouteLoRA(alone[m], xg, lgs[m], start, n, rps[m], tr, layer)
			}
			p.g.SetRoutedRows(byRows, 0)
			p.g.SetRoutedGroup(false)
			if p.g.RouteLoRAGroup(grouped, xg, lgs, start, n, rps, trG, traced, layer) {
				t.Fatal("the grouped routed call ran with its switch off")
			}
			p.g.SetRoutedGroup(true)
			before := p.g.RoutedGroupCount()
			if !p.g.RouteLoRAGroup(grouped, xg, lgs, start, n, rps, trG, traced, layer) {
				t.Fatal("the grouped routed call declined members the routing wide kernels take")
			}
			if p.g.RoutedGroupCount() != before+1 {
				t.Fatal("the grouped routed call did not count")
			}
			for m := range group {
				want, got := read(t, p.g, alone[m]), read(t, p.g, grouped[m])
				var scale, worst float64
				for i := range want {
					scale = max(scale, math.Abs(float64(want[i])))
					worst = max(worst, math.Abs(float64(got[i]-want[i])))
				}
				if !(worst <= 1e-5*scale) {
					t.Fatalf("member %d: grouped deltas differ from its own call by %.3g (max %.3g)", m, worst, scale)
				}
			}
			if a, g := read(t, p.g, trA), read(t, p.g, trG); fmt.Sprint(a) != fmt.Sprint(g) {
				t.Fatalf("trace: grouped %v, alone %v", g, a)
			}
			// Bit for bit again, from the same outputs.
			first := make([][]float32, len(group))
			for m := range group {
				first[m] = read(t, p.g, grouped[m])
				if err := p.g.Write(grouped[m], bases[m]); err != nil {
					t.Fatal(err)
				}
			}
			p.g.RouteLoRAGroup(grouped, xg, lgs, start, n, rps, trG, traced, layer)
			for m := range group {
				for i, v := range read(t, p.g, grouped[m]) {
					if math.Float32bits(v) != math.Float32bits(first[m][i]) {
						t.Fatalf("member %d element %d: %v, then %v", m, i, first[m][i], v)
					}
				}
			}
			if err := p.g.Err(); err != nil {
				t.Fatal(err)
			}
			var l0 [model.NumProj]*model.RoutedProj
			copy(l0[:], rps)
			p.g.ReleaseRouting(&model.Routing{Layers: [][model.NumProj]*model.RoutedProj{l0}})
		})
	}
}
