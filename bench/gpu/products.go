//go:build cuda

package main

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/loraplex/loraplex/bench/internal/benchenv"
	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/router"
)

// productsBreakdown times a decode layer's products of one input as MatMulShared makes them,
// inside CUDA graphs (inGraph), serially and forked onto the side lanes
// (LORAPLEX_PRODUCTS_FORK, cuda/fork.go): q/k/v, gate/up, o and down, each alone and with a
// router's gates of 28 experts beside it as a routed step has them (q/k/v's three and gate/up's
// two also batched into one call, LORAPLEX_GATES_BATCHED). Each call cycles through copies of
// the weights larger together than the L2 cache, so every call streams its weights from HBM as
// in a step. Every line prints the forked time's ratio to the serial time of the same products,
// measured in the same run, and the weights' GB/s.
func productsBreakdown(b *cuda.Backend, cfg *model.Config) error {
	const experts, copies = 28, 4
	r := rand.New(rand.NewPCG(93, 94))
	buf := benchenv.RandomBF16(cfg.IntermediateSize*cfg.HiddenSize, 0.02, 11)
	var uploads []model.Tensor
	defer func() {
		for _, t := range uploads {
			b.Free(t)
		}
	}()
	weight := func(p model.Proj, c int) (model.Tensor, error) {
		o, i := cfg.ProjShape(p)
		n := 2 * o * i
		off := (c * 4099 * 16) % (len(buf) - n + 1) &^ 1 // each copy's bytes start elsewhere in buf
		t, err := b.Upload(model.HostTensor{Name: p.String(), DType: model.BF16, Shape: []int{o, i}, Data: buf[off : off+n]}, o, i)
		uploads = append(uploads, t)
		return t, err
	}
	gatesOf := func(projs []model.Proj) ([]model.Tensor, error) {
		gates := make([]*router.Gate, len(projs))
		for j, p := range projs {
			_, in := cfg.ProjShape(p)
			w := make([]float32, experts*in)
			for e := range w {
				w[e] = float32(r.NormFloat64() / math.Sqrt(float64(in)))
			}
			gates[j] = &router.Gate{Name: p.String(), Proj: p, Rows: experts, Cols: in, W: w}
		}
		ups, err := router.UploadGates(b, gates)
		uploads = append(uploads, ups...)
		ts := make([]model.Tensor, len(gates))
		for j, g := range gates {
			ts[j] = g.T
		}
		return ts, err
	}
	defer b.SetGatesBatched(false)
	defer b.SetProductsFork(0)
	if err := prepareDecodeRow(b, cfg); err != nil {
		return err
	}
	fmt.Printf("a layer's products of one input per call inside a CUDA graph, serial and forked (LORAPLEX_PRODUCTS_FORK); gates of %d experts\n", experts)
	for _, group := range [][]model.Proj{{model.ProjQ, model.ProjK, model.ProjV}, {model.ProjGate, model.ProjUp}, {model.ProjO}, {model.ProjDown}} {
		var sets [copies][]model.Tensor
		bytes := 0.0
		for c := range sets {
			for _, p := range group {
				w, err := weight(p, c)
				if err != nil {
					return err
				}
				sets[c] = append(sets[c], w)
				if c == 0 {
					o, i := cfg.ProjShape(p)
					bytes += float64(2 * o * i)
				}
			}
		}
		gates, err := gatesOf(group)
		if err != nil {
			return err
		}
		_, in := cfg.ProjShape(group[0])
		for _, rows := range []int{16, 64, 128} {
			const spacing = 256 // the runner's logits views lie MaxTokens rows apart
			logits := b.Alloc(len(group)*spacing, experts)
			x, err := randomRows(b, r, rows, in)
			if err != nil {
				return err
			}
			var outs []model.Tensor
			for _, p := range group {
				o, _ := cfg.ProjShape(p)
				outs = append(outs, b.Alloc(rows, o))
			}
			base := len(outs)
			for j := range gates {
				outs = append(outs, logits.Slice(j*spacing, rows))
			}
			for _, side := range []struct {
				name           string
				gates, batched bool
			}{{"alone", false, false}, {"with gates", true, false}, {"with gates batched", true, true}} {
				if side.batched && len(group) == 1 {
					continue // nothing to batch
				}
				b.SetGatesBatched(side.batched)
				var ws [copies][]model.Tensor
				for c := range ws {
					ws[c] = sets[c]
					if side.gates {
						ws[c] = append(append([]model.Tensor{}, sets[c]...), gates...)
					}
				}
				o := outs[:base]
				if side.gates {
					o = outs
				}
				var serial float64
				for _, fork := range []int{0, 256} {
					if err := b.SetProductsFork(fork); err != nil {
						return err
					}
					c := 0
					us, err := inGraph(b, fmt.Sprintf("products %v %d %s %d", group, rows, side.name, fork), func() {
						b.MatMulShared(o, x, ws[c%copies])
						c++
					})
					if err != nil {
						return err
					}
					if fork == 0 {
						serial = us
						continue
					}
					fmt.Printf("  %-14s batch %3d %-19s serial %6.1f us  forked %6.1f us  %.2fx  (%4.0f GB/s forked)\n",
						fmt.Sprint(group), rows, side.name, serial, us, serial/us, bytes/us/1e3)
				}
			}
			for _, t := range append([]model.Tensor{logits, x}, outs[:base]...) {
				b.Free(t)
			}
		}
	}
	return b.Err()
}
