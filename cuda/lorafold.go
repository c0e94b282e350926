//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"fmt"

	"github.com/loraplex/loraplex/model"
)

var _ model.LoRAFolder = (*Backend)(nil)

// SetLoRAFold turns the folded LoRA shrinks (LORAPLEX_LORA_FOLD) on or off for the following
// steps (recorded graphs hold the other path's launches, so they are dropped).
func (b *Backend) SetLoRAFold(on bool) {
	setSwitch(b, &b.loraFold, on)
}

// FoldedProducts implements model.LoRAFolder for steps the GEMV kernel takes (at most gemvRows
// rows, default mode): one parts launch computes the base products and each adapted
// projection's shrink t = x · Aᵀ (A read through the segment table: lp_gemv_parts' wsrc), then
// the biases, then one lp_lora_group_expand launch adds the deltas (kernels/lora.cu, "Folded
// shrinks").
func (b *Backend) FoldedProducts(outs []model.Tensor, x model.Tensor, ws, biases []model.Tensor, segs [][]model.LoRASeg) bool {
	return b.foldedProducts(outs, x, nil, ws, biases, segs)
}

// NormFoldedProducts is FoldedProducts on in's normed rows, the norm (and residual add) folded
// into the same launch as NormMatMulShared folds it.
func (b *Backend) NormFoldedProducts(outs []model.Tensor, in model.NormedInput, ws, biases []model.Tensor, segs [][]model.LoRASeg) bool {
	return b.foldedProducts(outs, in.X, &in, ws, biases, segs)
}

func (b *Backend) foldedProducts(outs []model.Tensor, x model.Tensor, in *model.NormedInput, ws, biases []model.Tensor, segs [][]model.LoRASeg) bool {
	what := "FoldedProducts"
	if in != nil {
		what = "NormFoldedProducts"
	}
	if len(biases) != len(ws) || len(segs) != len(ws) {
		panic(fmt.Sprintf("cuda: %s of %d weights with %d biases and %d segment lists", what, len(ws), len(biases), len(segs)))
	}
	aligned := checkShared(what, outs, x, ws) && x.Cols%8 == 0 && uintptr(ptr(x))%16 == 0
	for i, bias := range biases {
		if bias.Rows > 0 && (bias.Cols != outs[i].Cols || bias.DType != model.F32) {
			panic(fmt.Sprintf("cuda: %s bias %s for %s", what, bias.Shape(), outs[i].Shape()))
		}
	}
	// Which calls fold is a function of the step key (row count, segment layout) and the
	// switches; everything else that could refuse (A's alignment) is checked below.
	n, adapted, tmp, maxRank := x.Rows, 0, 0, 0
	for i, sg := range segs {
		if len(sg) == 0 {
			continue
		}
		if len(sg) > 1 || sg[0].Start != 0 || sg[0].N != n {
			return false
		}
		_, rank, t := checkSegs(outs[i], x, sg)
		adapted, tmp, maxRank = adapted+1, tmp+t, max(maxRank, rank)
	}
	if !b.loraFold || b.batchInvariant || n == 0 || n > b.gemvRows || adapted == 0 || len(ws)+adapted > gemvPartsMax || !aligned {
		return false
	}
	var delta, next C.uintptr_t
	if in != nil {
		var ok bool
		if delta, next, ok = b.normInput(what, *in); !ok {
			return false
		}
	} else if !b.fusedDecode {
		return false // MatMulShared's parts launch is the fused decode path's
	}
	for _, sg := range segs {
		if len(sg) == 1 && uintptr(ptr(sg[0].A))%16 != 0 {
			// Not part of the step key: a recorded step with it is abandoned and rerun directly.
			if b.mode != modeDirect {
				b.broken = true
				return true
			}
			return false
		}
	}
	if b.failed() || !b.reserveSegs(adapted, tmp) {
		return true
	}
	// The base parts, then one part per adapted projection writing its t into the scratch at
	// the segment's offset, where the expand reads it.
	a, ga := &b.gemvArgs, &b.groupArgs
	a.set(outs, ws)
	end, at, toff, g := int(a.ends[len(ws)-1]), b.segUsed, 0, 0
	table := C.uintptr_t(b.segDev + uintptr(at*b.segSize))
	for i, sg := range segs {
		if len(sg) == 0 {
			continue
		}
		p := len(ws) + g
		end += sg[0].A.Rows
		a.ws[p], a.wsrcs[p], a.ys[p], a.ends[p] = 0, C.seg_a_addr(table, C.int(g)), C.uintptr_t(b.loraTmp+uintptr(4*toff)), C.uintptr_t(end)
		toff = b.putSegs(at+g, sg, toff)
		g++
		ga.outs[g-1], ga.dims[g-1], ga.ends[g-1] = ptr(outs[i]), C.uintptr_t(outs[i].Cols), C.uintptr_t(g)
	}
	parts := len(ws) + adapted
	b.folds++
	if _, ok := b.commitSegs(adapted); ok {
		opts := b.gemvOpts(ws...)
		if in != nil {
			b.ok("norm gemv parts (lora fold)", C.s_norm_gemv_parts(C.int(n), C.int(x.Cols), ptr(x), delta, next, ptr(in.Weight), C.float(in.Eps),
				&a.ws[0], &a.wsrcs[0], &a.ys[0], &a.ends[0], C.int(parts), opts, b.stream))
		} else {
			b.ok("gemv parts (lora fold)", C.s_gemv_parts(C.int(n), C.int(x.Cols), ptr(x), &a.ws[0], &a.wsrcs[0], &a.ys[0], &a.ends[0], C.int(parts), opts, b.stream))
		}
	}
	for i, bias := range biases {
		if bias.Rows > 0 {
			b.AddBias(outs[i], bias)
		}
	}
	if b.launch() {
		b.ok("lora expand (fold)", C.s_lora_group_expand(&ga.outs[0], &ga.dims[0], &ga.ends[0], C.int(adapted), table, C.int(adapted),
			C.int(n), C.uintptr_t(b.loraTmp), b.stream))
	}
	return true
}

// FoldCount is the number of folded calls the backend has taken (direct, recorded or replayed;
// for tests).
func (b *Backend) FoldCount() int { return b.folds }
