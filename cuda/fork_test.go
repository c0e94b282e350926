//go:build cuda

package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/router"
)

// With LORAPLEX_PRODUCTS_FORK, a products call of at most N rows deals its products to the side
// lanes, and every output is bitwise the serial call's: q/k/v-shaped products alone and with a
// router's three gates beside them (batched into one call or not), forked at 2 and 64 rows and on the
// stream alone at 300 (above N); run directly, recorded, and replayed on new inputs. Outputs
// are poisoned with NaN first and read right after the call, so a product a lane skipped, or
// one the read did not wait for (the lanes stay pending until the stream's next use), would show.
func TestProductsFork(t *testing.T) {
	g := newGPU(t)
	defer g.SetGatesBatched(false)
	defer func() {
		if err := g.SetProductsFork(0); err != nil {
			t.Fatal(err)
		}
	}()
	if err := g.AllocKV(model.KVSpec{Layers: 1, Pages: 8, PageSize: 8, KVHeads: 1, HeadDim: 8}); err != nil {
		t.Fatal(err)
	}
	_, dec := promptThenDecode([]int{0, 1, 2, 3, 4, 5, 6, 7}, []int{3}, 8)
	if err := g.Prepare(&dec); err != nil { // BeginStep records steps Prepare has seen
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(91, 92))
	const k, experts, forkRows = 1024, 28, 256
	widths := []int{512, 128, 128}
	var bases []model.Tensor
	for _, w := range widths {
		u, err := g.Upload(hostBF16(r, w, k, 1/math.Sqrt(k)), w, k)
		if err != nil {
			t.Fatal(err)
		}
		bases = append(bases, u)
	}
	var gates []*router.Gate
	for _, p := range []model.Proj{model.ProjQ, model.ProjK, model.ProjV} {
		w := randFloats(r, experts*k)
		for j := range w {
			w[j] /= float32(math.Sqrt(k))
		}
		gates = append(gates, &router.Gate{Name: p.String(), Proj: p, Rows: experts, Cols: k, W: w})
	}
	ups, err := router.UploadGates(g, gates)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, v := range append(ups, bases...) {
			g.Free(v)
		}
	}()
	allWs := append([]model.Tensor{}, bases...)
	for _, gt := range gates {
		allWs = append(allWs, gt.T)
	}
	for _, n := range []int{2, 64, 300} {
		t.Run(fmt.Sprintf("rows%d", n), func(t *testing.T) {
			const spacing = 320 // rows between consecutive logits views, as the runner's MaxTokens
			logits := g.Alloc(3*spacing, experts)
			x := g.Alloc(n, k)
			allOuts := []model.Tensor{}
			for _, w := range widths {
				allOuts = append(allOuts, g.Alloc(n, w))
			}
			for i := range gates {
				allOuts = append(allOuts, logits.Slice(i*spacing, n))
			}
			defer func() {
				for _, v := range append([]model.Tensor{logits, x}, allOuts[:len(widths)]...) {
					g.Free(v)
				}
			}()
			inputs := [][]float32{randFloats(r, n*k), randFloats(r, n*k)}
			var outs, ws []model.Tensor // the call's products: all, or the base ones alone
			// run writes input in, poisons the outputs, makes the products inside step key (nil:
			// directly) and reads them back.
			run := func(input int, key []byte, wantReplay bool) [][]float32 {
				t.Helper()
				if err := g.Write(x, inputs[input]); err != nil {
					t.Fatal(err)
				}
				for _, o := range outs {
					if err := g.Write(o, nanFloats(o.Rows*o.Cols)); err != nil {
						t.Fatal(err)
					}
				}
				if replay := g.BeginStep(key); replay != wantReplay {
					t.Fatalf("BeginStep replays %v, want %v", replay, wantReplay)
				}
				if !g.MatMulShared(outs, x, ws) {
					t.Fatalf("MatMulShared declined %d rows", n)
				}
				if err := g.EndStep(); err != nil {
					t.Fatal(err)
				}
				var got [][]float32
				for _, o := range outs {
					got = append(got, read(t, g, o))
				}
				return got
			}
			same := func(what string, got, want [][]float32) {
				t.Helper()
				for p := range want {
					for j := range want[p] {
						if math.Float32bits(got[p][j]) != math.Float32bits(want[p][j]) || math.IsNaN(float64(got[p][j])) {
							t.Fatalf("%s: product %d element %d is %v, serially %v", what, p, j, got[p][j], want[p][j])
						}
					}
				}
			}
			for _, c := range []struct {
				name           string
				gates, batched bool
				forked         int // products on the lanes
			}{
				// Without gates q stays on the stream and k and v go to the lanes; with them
				// (batched into one call or not) the gates stay on the stream and q, k and v go
				// to the three lanes. 300 rows are too many to fork.
				{"no gates", false, false, 2}, {"gates", true, false, 3}, {"gates batched", true, true, 3},
			} {
				batched := c.batched
				outs, ws = allOuts[:len(widths)], allWs[:len(widths)]
				if c.gates {
					outs, ws = allOuts, allWs
				}
				g.SetGatesBatched(batched)
				if err := g.SetProductsFork(0); err != nil {
					t.Fatal(err)
				}
				serial := [][][]float32{run(0, nil, false), run(1, nil, false)}
				if err := g.SetProductsFork(forkRows); err != nil {
					t.Fatal(err)
				}
				forked := g.ForkedProducts()
				same(c.name+", direct", run(0, nil, false), serial[0])
				want := 0
				if n <= forkRows {
					want = c.forked
				}
				if got := g.ForkedProducts() - forked; got != want {
					t.Fatalf("%s: %d products issued on the lanes, want %d", c.name, got, want)
				}
				key := []byte(fmt.Sprintf("products fork %d %s", n, c.name))
				same(c.name+", recorded", run(0, key, false), serial[0])
				same(c.name+", replayed on new inputs", run(1, key, true), serial[1])
			}
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// With the products forked, the model fixtures still match the reference (prompts whole and in
// chunks of 3 rows, decode steps recorded and replayed), and recorded steps replay exactly
// what direct launches compute; products were forked.
func TestProductsForkFixtures(t *testing.T) {
	t.Setenv("LORAPLEX_PRODUCTS_FORK", "on")
	b := newGPU(t)
	forked := b.ForkedProducts()
	eachFixture(t, b, func(t *testing.T, c fixtureCase) { runChunkings(t, c.h, c.fx.Cases, c.adapters, c.name) })
	if b.ForkedProducts() == forked {
		t.Fatal("no product of the fixtures was forked")
	}
	t.Run("graphs match direct", TestGraphsMatchDirect)
}

// Routed steps with the products forked (the base products on the lanes, their gates, batched,
// and the routing shrinks beside them on the stream, the expands waiting on the lanes) route the
// router fixtures as host routing does (identical traces, logits within rounding), and routed
// decode steps record and replay, with the routing shrink by rows too. (The fixtures' widths put
// their gate/up products, and q where it has over 64 outputs, on the lanes: o, down, k and v are
// no wider than a gate there and stay on the stream.)
func TestProductsForkRouted(t *testing.T) {
	t.Setenv("LORAPLEX_PRODUCTS_FORK", "on")
	t.Setenv("LORAPLEX_GATES_BATCHED", "on")
	t.Setenv("LORAPLEX_ROUTED_BF16", "on") // the kept norm's and SwiGLU's products forked too
	b := newGPU(t)
	b.SetRoutedExpertMajor(false, -1)
	forked := b.ForkedProducts()
	deviceRoutingMatchesHost(t, b, true)
	if b.ForkedProducts() == forked {
		t.Fatal("no product of the routed fixtures was forked")
	}
	t.Run("replays", TestRoutedDecodeReplaysCUDA)
	t.Run("kept replays", TestKeptRoutedReplaysCUDA)
	t.Run("by rows", TestRoutedRowsFixtures)
}
