//go:build cuda

package main

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/router"
)

// gatesBreakdown times a routed decode layer's gate products alone, inside CUDA graphs
// (inGraph), the ways the backend can make them: q/k/v's three gates of 28 experts and gate/up's
// two, each from the shared input as MatMulShared gets them (the bf16 conversion of x included,
// as in a routed step), on cuBLAS one product at a time, as one strided-batched cuBLAS call
// (LORAPLEX_GATES_BATCHED) and as one skinny-kernel launch of parts (LORAPLEX_GEMM_SKINNY); and a
// single gate (o's, down's) on cuBLAS and on the skinny kernel. Each line prints its ratio to the
// one-at-a-time cuBLAS time of the same products, measured in the same run.
func gatesBreakdown(b *cuda.Backend, cfg *model.Config) error {
	const experts = 28
	r := rand.New(rand.NewPCG(91, 92))
	hidden := cfg.HiddenSize
	gates := make([]*router.Gate, 3)
	for i := range gates {
		w := make([]float32, experts*hidden)
		for j := range w {
			w[j] = float32(r.NormFloat64() / math.Sqrt(float64(hidden)))
		}
		gates[i] = &router.Gate{Name: fmt.Sprintf("gate%d", i), Proj: model.Proj(i), Rows: experts, Cols: hidden, W: w}
	}
	ups, err := router.UploadGates(b, gates)
	if err != nil {
		return err
	}
	defer func() {
		for _, t := range ups {
			b.Free(t)
		}
	}()
	defer b.SetGatesBatched(false)
	defer b.SetGemmSkinny(false)
	if err := prepareDecodeRow(b, cfg); err != nil {
		return err
	}
	fmt.Printf("router gate products (%d experts, input %d) per call inside a CUDA graph, x's bf16 conversion included\n", experts, hidden)
	for _, rows := range []int{16, 64, 128} {
		const spacing = 256 // the runner's logits views lie MaxTokens rows apart
		logits := b.Alloc(3*spacing, experts)
		x, err := randomRows(b, r, rows, hidden)
		if err != nil {
			return err
		}
		for _, n := range []int{3, 2, 1} {
			outs, ws := make([]model.Tensor, n), make([]model.Tensor, n)
			for i := range n {
				outs[i], ws[i] = logits.Slice(i*spacing, rows), gates[i].T
			}
			var base float64
			for _, side := range []struct {
				name            string
				batched, skinny bool
			}{{"cuBLAS one at a time", false, false}, {"cuBLAS batched", true, false}, {"skinny kernel", false, true}} {
				if n == 1 && side.batched {
					continue // nothing to batch
				}
				b.SetGatesBatched(side.batched)
				b.SetGemmSkinny(side.skinny)
				us, err := inGraph(b, fmt.Sprintf("gates %d %d %s", rows, n, side.name), func() { b.MatMulShared(outs, x, ws) })
				if err != nil {
					return err
				}
				if base == 0 {
					base = us
				}
				fmt.Printf("  batch %3d, %d gate(s): %-22s %6.1f us  %.2fx\n", rows, n, side.name, us, base/us)
			}
		}
		b.Free(logits)
		b.Free(x)
	}
	return b.Err()
}
