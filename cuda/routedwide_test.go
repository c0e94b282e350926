//go:build cuda

package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/model"
)

// The wide routed LoRA (LORAPLEX_ROUTED_WIDE) adds what the host routing adds (model.Route per
// row, then the CPU LoRA pass by pass) within the routed tests' 2e-3 of a row's largest delta,
// what the plain routed kernels add within fp32 rounding (another summation order in the
// shrink; 1e-4 of the row's largest delta, the delta alone here where TestLoRAWideSweep's 1e-5
// is of outputs that carry a base), and the same bits on a repeat run: for top-k 1 to 8, with null experts and experts
// missing on the projection, expert ranks 1 to 64 (odd ones: the scalar expand), input widths
// from 24 (one k-slice, the scalar shrink) to the 14 splits of 14,336, output widths that leave
// a part of the last column chunk, and 1 to 64 routed rows (the split count follows rows x k).
// Rows outside the routed range stay exactly zero. The wide kernels that route in their shrink
// (LORAPLEX_ROUTED_FUSED) add the wide kernels' bits: the same routing, the same arithmetic.
func TestRoutedWideSweep(t *testing.T) {
	p := pair{cpu.New(0), newGPU(t)}
	defer p.c.Close()
	defer p.g.SetRoutedWide(false)
	defer p.g.SetRoutedFused(false)
	r := rand.New(rand.NewPCG(51, 52))
	ranks := []int{1, 3, 8, 16, 7, 33, 64, 2, 24, 5, 17, 32}
	gates := []routeCase{
		{experts: 4, nulls: 0, k: 1, T: 1},
		{experts: 28, nulls: 0, k: 2, T: 1}, // the benchmark's routed top-2 of 28
		{experts: 6, nulls: 2, k: 3, T: 0.7, nilAt: []int{1}},
		{experts: 12, nulls: 4, k: 8, T: 1.5, nilAt: []int{0, 5}},
	}
	const pad = 2 // rows before and after the routed ones
	for _, sh := range [][2]int{{24, 40}, {100, 24}, {1000, 4097}, {4096, 4096}, {4096, 14336}, {14336, 4096}, {4100, 100}} {
		in, out := sh[0], sh[1]
		for gi, rc := range gates {
			rows := rc.experts + rc.nulls
			ec, eg, ids := routeExperts(t, p, r, rc, ranks, in, out, 100*gi)
			rp := &model.RoutedProj{Gate: p.g.Alloc(rows, in), TopK: rc.k, Temperature: rc.T, Nulls: rc.nulls, Experts: eg, IDs: ids}
			for _, n := range []int{1, 5, 64} {
				t.Run(fmt.Sprintf("in%d_out%d/e%d_n%d_k%d/rows%d", in, out, rc.experts, rc.nulls, rc.k, n), func(t *testing.T) {
					total := n + 2*pad
					logits := routeLogits(r, n, rows, rc.nulls, rc.k)
					xc, xg := p.tensor(t, total, in, randFloats(r, total*in))
					oc := p.c.Alloc(total, out) // zeros: each row compares its routed delta alone
					hostRouteLoRA(p.c, oc, xc, logits, pad, n, rc, ec)
					want := read(t, p.c, oc)
					lg := p.g.Alloc(n, rows)
					if err := p.g.Write(lg, logits); err != nil {
						t.Fatal(err)
					}
					// The wide kernels, the plain ones, the wide ones again (the same bits), the
					// wide ones routing in their shrink (the same bits again).
					var results [4][]float32
					for i, side := range [][2]bool{{true, false}, {false, false}, {true, false}, {true, true}} {
						p.g.SetRoutedWide(side[0])
						p.g.SetRoutedFused(side[1])
						og := p.g.Alloc(total, out)
						if err := p.g.Write(og, make([]float32, total*out)); err != nil {
							t.Fatal(err)
						}
						p.g.RouteLoRA(og, xg, lg, pad, n, rp, model.Tensor{}, 0)
						results[i] = read(t, p.g, og)
						p.g.Free(og)
					}
					if err := p.g.Err(); err != nil {
						t.Fatal(err)
					}
					got, plain, again, fused := results[0], results[1], results[2], results[3]
					for row := 0; row < total; row++ {
						var scale, dHost, dPlain float64
						for c := row * out; c < (row+1)*out; c++ {
							if math.IsNaN(float64(got[c])) || math.IsInf(float64(got[c]), 0) {
								t.Fatalf("row %d column %d is %v", row, c-row*out, got[c])
							}
							if math.Float32bits(got[c]) != math.Float32bits(again[c]) {
								t.Fatalf("row %d column %d: %v, then %v on the same input", row, c-row*out, got[c], again[c])
							}
							if math.Float32bits(got[c]) != math.Float32bits(fused[c]) {
								t.Fatalf("row %d column %d: %v routed apart, %v routed in the shrink", row, c-row*out, got[c], fused[c])
							}
							scale = max(scale, math.Abs(float64(want[c])))
							dHost = max(dHost, math.Abs(float64(got[c]-want[c])))
							dPlain = max(dPlain, math.Abs(float64(got[c]-plain[c])))
						}
						if scale == 0 && dHost != 0 {
							t.Fatalf("row %d: the host adds nothing, the wide kernels changed it by up to %.3g", row, dHost)
						}
						if dHost > 2e-3*scale {
							t.Fatalf("row %d: wide routed delta differs from the host routing by %.3g (row max %.3g)", row, dHost, scale)
						}
						if dPlain > 1e-4*scale {
							t.Fatalf("row %d: wide routed delta differs from the plain kernels by %.3g (row max %.3g)", row, dPlain, scale)
						}
					}
					p.c.Free(xc)
					p.c.Free(oc)
					p.g.Free(xg)
					p.g.Free(lg)
				})
			}
			p.g.ReleaseRouting(&model.Routing{Layers: [][model.NumProj]*model.RoutedProj{{rp}}})
			p.g.Free(rp.Gate)
			for j := range ec {
				if ec[j] != nil {
					p.c.Free(ec[j].A)
					p.c.Free(ec[j].B)
					p.g.Free(eg[j].A)
					p.g.Free(eg[j].B)
				}
			}
		}
	}
}

// In deterministic mode the wide routed kernels step aside: a routed row's delta is bitwise the
// same alone and inside a 600-row routed call, where the wide shrink would split a 4,096-wide
// input in 4 for the lone row's two choices and not at all for the 1,200 of the call (logged:
// how many elements move between the two with the mode off).
func TestRoutedWideStepsAsideInDeterministicMode(t *testing.T) {
	p := pair{cpu.New(0), newGPU(t)}
	defer p.c.Close()
	b := p.g
	b.SetRoutedWide(true)
	defer b.SetRoutedWide(false)
	defer b.SetBatchInvariant(false)
	r := rand.New(rand.NewPCG(55, 56))
	const rows, in, out = 600, 4096, 1000
	rc := routeCase{experts: 6, nulls: 1, k: 2, T: 1}
	_, eg, ids := routeExperts(t, p, r, rc, []int{16, 8, 7}, in, out, 0)
	rp := &model.RoutedProj{Gate: b.Alloc(rc.experts+rc.nulls, in), TopK: rc.k, Temperature: rc.T, Nulls: rc.nulls, Experts: eg, IDs: ids}
	defer b.ReleaseRouting(&model.Routing{Layers: [][model.NumProj]*model.RoutedProj{{rp}}})
	gate := rc.experts + rc.nulls
	logits, xs, base := routeLogits(r, rows, gate, rc.nulls, rc.k), randFloats(r, rows*in), randFloats(r, rows*out)
	routed := func(first, n int) []float32 {
		x, o, l := b.Alloc(n, in), b.Alloc(n, out), b.Alloc(n, gate)
		defer b.Free(x)
		defer b.Free(o)
		defer b.Free(l)
		for _, w := range []struct {
			t    model.Tensor
			vals []float32
		}{{x, xs[first*in : (first+n)*in]}, {o, base[first*out : (first+n)*out]}, {l, logits[first*gate : (first+n)*gate]}} {
			if err := b.Write(w.t, w.vals); err != nil {
				t.Fatal(err)
			}
		}
		b.RouteLoRA(o, x, l, 0, n, rp, model.Tensor{}, 0)
		return read(t, b, o)
	}
	checkRowsAlone(t, b, rows, out, routed)
}
