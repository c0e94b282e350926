//go:build cuda

package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/router"
)

// With LORAPLEX_GATES_BATCHED, the gates of one input that router.UploadGates laid out one
// after another, into outputs the same distance apart, are one strided-batched product: each
// output within cuBLAS's rounding of its product alone and of a float64 product of the same bf16
// inputs, every output written, the base products beside them untouched by the batching. Gates
// that are not adjacent, or outputs that are not evenly spaced, stay single products, and so
// does everything with the switch off.
func TestGatesBatched(t *testing.T) {
	g := newGPU(t)
	defer g.SetGatesBatched(false)
	r := rand.New(rand.NewPCG(81, 82))
	const k, experts, hidden = 1024, 28, 640
	// One layer's gates as a served router's: q/k/v/o read k columns, down reads hidden.
	projs := []model.Proj{model.ProjQ, model.ProjK, model.ProjV, model.ProjO, model.ProjDown}
	gates := make([]*router.Gate, len(projs))
	for i, p := range projs {
		cols := k
		if p == model.ProjDown {
			cols = hidden
		}
		w := randFloats(r, experts*cols)
		for j := range w {
			w[j] /= float32(math.Sqrt(float64(cols)))
		}
		gates[i] = &router.Gate{Name: p.String(), Proj: p, Rows: experts, Cols: cols, W: w}
	}
	ups, err := router.UploadGates(g, gates)
	if err != nil {
		t.Fatal(err)
	}
	if len(ups) != 2 {
		t.Fatalf("UploadGates made %d tensors of two input widths", len(ups))
	}
	base, err := g.Upload(hostBF16(r, 512, k, 1/math.Sqrt(k)), 512, k)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, v := range append(ups, base) {
			g.Free(v)
		}
	}()
	for _, n := range []int{64, 9} {
		t.Run(fmt.Sprintf("rows%d", n), func(t *testing.T) {
			const spacing = 80 // rows between consecutive logits views, as the runner's MaxTokens
			logits := g.Alloc(5*spacing, experts)
			view := func(i int) model.Tensor { return logits.Slice(i*spacing, n) }
			x, baseOut := g.Alloc(n, k), g.Alloc(n, 512)
			defer func() {
				for _, v := range []model.Tensor{logits, x, baseOut} {
					g.Free(v)
				}
			}()
			xv := randFloats(r, n*k)
			if err := g.Write(x, xv); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				name    string
				gates   []int // indexes into gates (q, k, v, o)
				views   []int // the logits view of each
				batched int   // products the batched calls take
			}{
				{"q/k/v", []int{0, 1, 2}, []int{0, 1, 2}, 3},
				{"q/v routed, k not", []int{0, 2}, []int{0, 2}, 0}, // weights not adjacent
				{"k/v spaced two apart", []int{1, 2}, []int{0, 2}, 2},
				{"uneven outputs", []int{0, 1, 2, 3}, []int{0, 1, 3, 4}, 2 + 2},
				{"reversed", []int{1, 0}, []int{0, 1}, 0},
			} {
				for _, on := range []bool{true, false} {
					g.SetGatesBatched(on)
					if err := g.Write(logits, nanFloats(logits.Rows*logits.Cols)); err != nil {
						t.Fatal(err)
					}
					outs, ws := []model.Tensor{baseOut}, []model.Tensor{base}
					for i, gi := range c.gates {
						outs, ws = append(outs, view(c.views[i])), append(ws, gates[gi].T)
					}
					if err := g.Write(baseOut, nanFloats(n*512)); err != nil {
						t.Fatal(err)
					}
					took := g.BatchedProducts()
					if !g.MatMulShared(outs, x, ws) {
						t.Fatalf("%s: MatMulShared declined %d rows", c.name, n)
					}
					want := 0
					if on {
						want = c.batched
					}
					if got := g.BatchedProducts() - took; got != want {
						t.Fatalf("%s (switch %v): batched calls took %d products, want %d", c.name, on, got, want)
					}
					// The base product is MatMul's to the bit; views no product writes stay NaN.
					baseAlone := g.Alloc(n, 512)
					g.MatMul(baseAlone, x, base)
					if a, bo := read(t, g, baseAlone), read(t, g, baseOut); !slices.EqualFunc(a, bo, func(p, q float32) bool { return math.Float32bits(p) == math.Float32bits(q) }) {
						t.Fatalf("%s (switch %v): the base product differs from MatMul's", c.name, on)
					}
					g.Free(baseAlone)
					for v := 0; v < 5; v++ {
						if slices.Contains(c.views, v) {
							continue
						}
						for j, e := range read(t, g, view(v)) {
							if !math.IsNaN(float64(e)) {
								t.Fatalf("%s (switch %v): view %d, which no product writes, holds %v at %d", c.name, on, v, e, j)
							}
						}
					}
					for i, gi := range c.gates {
						alone := g.Alloc(n, experts)
						g.MatMul(alone, x, gates[gi].T)
						got, ref := read(t, g, view(c.views[i])), read(t, g, alone)
						g.Free(alone)
						gw := gates[gi].W
						for row := 0; row < n; row++ {
							for e := 0; e < experts; e++ {
								var exact, mag float64
								for j := 0; j < k; j++ {
									xb := float64(model.BF16ToF32(model.F32ToBF16(xv[row*k+j])))
									wb := float64(model.BF16ToF32(model.F32ToBF16(gw[e*k+j])))
									exact += xb * wb
									mag += math.Abs(xb * wb)
								}
								v := got[row*experts+e]
								if d := math.Abs(float64(v) - exact); !(d <= 1e-4*mag+1e-6) {
									t.Fatalf("%s (switch %v): gate %d logit [%d, %d] = %v, float64 product %v (|terms| %g)", c.name, on, gi, row, e, v, exact, mag)
								}
								if d := math.Abs(float64(v) - float64(ref[row*experts+e])); !(d <= 2e-4*mag+1e-6) {
									t.Fatalf("%s (switch %v): gate %d logit [%d, %d] = %v, alone %v", c.name, on, gi, row, e, v, ref[row*experts+e])
								}
							}
						}
					}
				}
			}
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Routed steps with the gates batched route as before: the device routing of the router
// fixtures (their q/k/v and gate/up gates uploaded by the bundle) agrees with host routing on
// the same GPU (identical traces) with the grouped routed launches, and routed decode steps
// still record and replay as CUDA graphs; the batched calls took some of the gates.
func TestGatesBatchedRouted(t *testing.T) {
	t.Setenv("LORAPLEX_GATES_BATCHED", "on")
	b := newGPU(t)
	took := b.BatchedProducts()
	b.SetRoutedWide(true)
	b.SetRoutedFused(true)
	b.SetRoutedGroup(true)
	b.SetRoutedExpertMajor(false, -1)
	deviceRoutingMatchesHost(t, b, true)
	if b.BatchedProducts() == took {
		t.Fatal("no gate product of the routed fixtures was batched")
	}
	t.Run("replays", TestRoutedDecodeReplaysCUDA)
	t.Run("kept replays", TestKeptRoutedReplaysCUDA)
}

// The routing shrink by rows (LORAPLEX_ROUTED_ROWS) routes the router fixtures as host routing
// does (identical traces) with the grouped routed launches, every call taking it.
// (TestKeptRoutedReplaysCUDA records and replays routed decode steps with it.)
func TestRoutedRowsFixtures(t *testing.T) {
	b := newGPU(t)
	b.SetRoutedRows(true, 0)
	took := b.RoutedRowsCount()
	b.SetRoutedExpertMajor(false, -1)
	deviceRoutingMatchesHost(t, b, true)
	if b.RoutedRowsCount() == took {
		t.Fatal("no routed call of the fixtures took the routing shrink by rows")
	}
}

// With LORAPLEX_ROUTED_BF16 (the routed steps' norms kept beside their products, SwiGLU feeding
// the down gate) and the gates batched, the router fixtures route on the device as on the host
// (identical traces, logits within rounding), and routed decode steps record and replay.
func TestRoutedBF16Fixtures(t *testing.T) {
	t.Setenv("LORAPLEX_ROUTED_BF16", "on")
	t.Setenv("LORAPLEX_GATES_BATCHED", "on")
	b := newGPU(t)
	b.SetRoutedExpertMajor(false, -1)
	bf16, batched := b.RoutedBF16Count(), b.BatchedProducts()
	deviceRoutingMatchesHost(t, b, true)
	if b.RoutedBF16Count() == bf16 || b.BatchedProducts() == batched {
		t.Fatalf("the routed fixtures took %d kept norms or SwiGLU calls with the down gate and batched %d gate products",
			b.RoutedBF16Count()-bf16, b.BatchedProducts()-batched)
	}
	t.Run("replays", TestRoutedDecodeReplaysCUDA)
	t.Run("kept replays", TestKeptRoutedReplaysCUDA)
}
