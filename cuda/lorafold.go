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
	// The forward pass offers every adapted group of every step: decline what neither path
	// takes before any other work (a batch-64 step offers about 190 calls).
	keep := in != nil && b.normKeep && b.normToCublas(*in)
	if !keep && (!b.loraFold || b.batchInvariant || x.Rows == 0 || x.Rows > b.gemvRows) {
		return false
	}
	aligned := checkShared(what, outs, x, ws) && x.Cols%8 == 0 && uintptr(ptr(x))%16 == 0
	for i, bias := range biases {
		if bias.Rows > 0 && (bias.Cols != outs[i].Cols || bias.DType != model.F32) {
			panic(fmt.Sprintf("cuda: %s bias %s for %s", what, bias.Shape(), outs[i].Shape()))
		}
	}
	if keep {
		return b.normKeptProducts(outs, *in, ws, biases, segs)
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
	if adapted == 0 || len(ws)+adapted > gemvPartsMax || !aligned { // the rows and switches were checked above
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
				&a.ws[0], &a.wsrcs[0], &a.ys[0], &a.ends[0], C.int(parts), opts, b.work()))
		} else {
			b.ok("gemv parts (lora fold)", C.s_gemv_parts(C.int(n), C.int(x.Cols), ptr(x), &a.ws[0], &a.wsrcs[0], &a.ys[0], &a.ends[0], C.int(parts), opts, b.work()))
		}
	}
	for i, bias := range biases {
		if bias.Rows > 0 {
			b.AddBias(outs[i], bias)
		}
	}
	if b.launch() {
		b.ok("lora expand (fold)", C.s_lora_group_expand(&ga.outs[0], &ga.dims[0], &ga.ends[0], C.int(adapted), table, C.int(adapted),
			C.int(n), C.uintptr_t(b.loraTmp), b.work()))
	}
	return true
}

// normKeptProducts is NormFoldedProducts for the rows MatMul gives cuBLAS (normToCublas), any
// segment layout: one lp_rmsnorm_bf16 launch writes the products' bf16 input (normCublas's) and
// the normed rows in fp32 into b.kept, then come the cuBLAS products, the biases and the
// segments' deltas read from b.kept (LoRAGroup, else LoRA per projection), projShared's order.
// An adapted step declines NormMatMulShared, since its shrinks read the normed rows; without
// this it ran AddRMSNorm, then MatMulShared's conversion pass (a launch reading the fp32 rows
// again: one a group, two a layer of a batch-64 step; 32 MB read and 16 MB written a group at a
// 2,048-row prefill). The norm is the same kernel for the same rows (rmsnorm.cu), so the fp32
// rows are bitwise lp_add_rmsnorm's and the bf16 rows the conversion's: every output is bitwise
// the unfused path's (TestNormKeptProducts). A function of the step key (rows, segment layout)
// and the switches, as NormFuser asks.
func (b *Backend) normKeptProducts(outs []model.Tensor, in model.NormedInput, ws, biases []model.Tensor, segs [][]model.LoRASeg) bool {
	x := in.X
	checkNorm("NormFoldedProducts", in)
	n := x.Rows * x.Cols
	// Replayed steps launch nothing but still put their segment tables (LoRAGroup below). A
	// buffer too small grows only in a direct step: a recording that needs it is abandoned and
	// rerun directly (canGrow), and a replay's sizes are its recording's.
	if !b.reserve(&b.xbf, &b.xbfCap, n, 2) || !b.reserve(&b.kept, &b.keptCap, n, 4) {
		return true
	}
	b.normKept++
	kept := model.Tensor{Rows: x.Rows, Cols: x.Cols, DType: model.F32, Buf: dev{b.kept}}
	if b.launch() && b.keptNorm(in) {
		b.productsBF16(outs, x, ws)
	}
	for i, bias := range biases {
		if bias.Rows > 0 {
			b.AddBias(outs[i], bias)
		}
	}
	if !b.LoRAGroup(outs, kept, segs) {
		for i, sg := range segs {
			if len(sg) > 0 {
				b.LoRA(outs[i], kept, sg)
			}
		}
	}
	return true
}

var _ model.NormKeeper = (*Backend)(nil)

// NormKeptMatMulShared implements model.NormKeeper for the rows MatMul gives cuBLAS
// (normToCublas) with LORAPLEX_ROUTED_BF16: one lp_rmsnorm_bf16 launch writes the products' bf16
// input and the normed rows in fp32 into b.kept (keptNorm), then come the products as
// MatMulShared makes them (productsBF16), and b.kept is returned for the routing shrinks. A
// routed step ran AddRMSNorm and then MatMulShared's conversion pass, a launch reading the fp32
// rows again (two a layer: 3.6 us each at batch 64 in goals-2026-12-07-s27a call 2). The rows are
// bitwise the unfused path's (normKeptProducts says why), so every product and delta is too.
func (b *Backend) NormKeptMatMulShared(outs []model.Tensor, in model.NormedInput, ws []model.Tensor) (model.Tensor, bool) {
	x := in.X
	checkShared("NormKeptMatMulShared", outs, x, ws)
	if !b.routedBF16 || !b.normToCublas(in) {
		return model.Tensor{}, false
	}
	checkNorm("NormKeptMatMulShared", in)
	n := x.Rows * x.Cols
	b.routedBF16s++
	// As normKeptProducts: a buffer too small grows only in a direct step (a recording that needs
	// it is abandoned and rerun directly), and a replay launches nothing.
	if b.reserve(&b.xbf, &b.xbfCap, n, 2) && b.reserve(&b.kept, &b.keptCap, n, 4) && b.launch() && b.keptNorm(in) {
		b.productsBF16(outs, x, ws)
	}
	return model.Tensor{Rows: x.Rows, Cols: x.Cols, DType: model.F32, Buf: dev{b.kept}}, true
}

// keptNorm launches lp_rmsnorm_bf16 on in, the cuBLAS products' bf16 input into xbf and the
// normed rows in fp32 into kept (both reserved by the caller for in.X's rows); false when the
// launch failed (the backend has recorded why).
func (b *Backend) keptNorm(in model.NormedInput) bool {
	x := in.X
	var delta, next C.uintptr_t
	if in.Delta.Rows > 0 {
		delta, next = ptr(in.Delta), ptr(in.Next)
	}
	return b.ok("rmsnorm_bf16 (kept)", C.s_rmsnorm_bf16(ptr(x), delta, next, C.uintptr_t(b.xbf), C.uintptr_t(b.kept), ptr(in.Weight),
		C.int(x.Rows), C.int(x.Cols), C.float(in.Eps), b.normOpts(), b.work()))
}

// SetNormKeep turns normKeptProducts on or off for the following steps (recorded graphs hold
// the other path's launches, so they are dropped).
func (b *Backend) SetNormKeep(on bool) {
	setSwitch(b, &b.normKeep, on)
}

// NormKeptCount is the number of normKeptProducts calls the backend has taken (for tests).
func (b *Backend) NormKeptCount() int { return b.normKept }

// FoldCount is the number of folded calls the backend has taken (direct, recorded or replayed;
// for tests).
func (b *Backend) FoldCount() int { return b.folds }
