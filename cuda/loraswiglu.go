//go:build cuda

package cuda

// #include "shims.h"
import "C"

import "github.com/loraplex/loraplex/model"

// The LoRA expands folded into the kernels that read their outputs next (kernels/lora.cu, "LoRA
// SwiGLU" and "LoRA RoPE"): gate/up's into SwiGLU, q/k/v's into RoPE + KV store.

var _ model.LoRASwiGLUer = (*Backend)(nil)

// SetLoRASwiGLU turns NormGateUpLoRASwiGLU on or off for the following steps (recorded graphs
// hold the other path's launches, so they are dropped).
func (b *Backend) SetLoRASwiGLU(on bool) {
	setSwitch(b, &b.loraSwiGLU, on)
}

// LoRASwiGLUCount is the number of NormGateUpLoRASwiGLU calls the backend has taken (direct,
// recorded or replayed; for tests).
func (b *Backend) LoRASwiGLUCount() int { return b.loraSwiGLUs }

// NormGateUpLoRASwiGLU implements model.LoRASwiGLUer for the rows MatMul gives cuBLAS
// (normToCublas) with the wide LoRA kernels and SwiGLU's bf16 copy on: the kept norm
// (keptNorm: the products' bf16 input and the fp32 rows the shrinks read), the gate and up
// products on cuBLAS, lp_lora_swiglu (the wide shrink of both groups, then SwiGLU adding each
// row's deltas to the products it reads, act in fp32 and as the down product's bf16 input), and
// the down product. kernels/lora.cu ("LoRA SwiGLU") says why. The answer is a function of the
// rows, the segment layout and the switches, as the step key needs.
func (b *Backend) NormGateUpLoRASwiGLU(out, act, gate, up model.Tensor, in model.NormedInput, wGate, wUp, wDown model.Tensor,
	segs [2][]model.LoRASeg) bool {
	total := len(segs[0]) + len(segs[1])
	if !b.loraSwiGLU || !b.swigluBF16 || total == 0 || !b.normToCublas(in) {
		return false // before any other work: the forward pass offers every adapted layer of every step
	}
	x := in.X
	n, hidden, inter := x.Rows, x.Cols, wGate.Rows
	const what = "NormGateUpLoRASwiGLU"
	products, ws := [2]model.Tensor{gate, up}, [2]model.Tensor{wGate, wUp}
	checkShared(what, products[:], x, ws[:])
	checkGateUp(what, act, x, wGate, wUp)
	downOut, down := [1]model.Tensor{out}, [1]model.Tensor{wDown}
	checkShared(what, downOut[:], act, down[:])
	checkNorm(what, in)
	r0, k0, t0 := checkSegs(gate, x, segs[0])
	r1, k1, t1 := checkSegs(up, x, segs[1])
	maxRows, maxRank := max(r0, r1), max(k0, k1)
	splits, stride := b.loraWideLayout(hidden, total, maxRows, maxRank)
	if splits == 0 {
		return false // the wide kernels off: their split partials are what lp_lora_swiglu reads
	}
	// As normKeptProducts: replays put their segment tables and launch nothing; buffers grow
	// only in a direct step. xbf holds the normed rows for gate and up, then the activation.
	if !b.reserve(&b.xbf, &b.xbfCap, n*max(hidden, inter), 2) || !b.reserve(&b.kept, &b.keptCap, n*hidden, 4) ||
		b.failed() || !b.reserveSegs(total, max(t0+t1, splits*stride)) {
		return true
	}
	b.loraSwiGLUs++
	at := b.segUsed
	b.putSegs(at+len(segs[0]), segs[1], b.putSegs(at, segs[0], 0))
	table, ok := b.commitSegs(total)
	if !ok || !b.launch() || !b.keptNorm(in) {
		return true
	}
	b.productsBF16(products[:], x, ws[:])
	if b.ok("lora swiglu", C.s_lora_swiglu(ptr(act), C.uintptr_t(b.xbf), ptr(gate), ptr(up), C.int(n), C.int(inter), C.uintptr_t(b.kept), table,
		C.int(len(segs[0])), C.int(total), C.int(maxRows), C.int(maxRank), C.uintptr_t(b.loraTmp), C.int(hidden), C.int(splits), C.int(stride), b.work())) {
		b.productBF16(out, act, wDown, 1, 0)
	}
	return true
}

var _ model.LoRARoPEer = (*Backend)(nil)

// SetLoRARoPE turns NormQKVLoRARoPE on or off for the following steps (recorded graphs hold the
// other path's launches, so they are dropped).
func (b *Backend) SetLoRARoPE(on bool) {
	setSwitch(b, &b.loraRoPE, on)
}

// LoRARoPECount is the number of NormQKVLoRARoPE calls the backend has taken (direct, recorded
// or replayed; for tests).
func (b *Backend) LoRARoPECount() int { return b.loraRoPEs }

// NormQKVLoRARoPE implements model.LoRARoPEer for the rows MatMul gives cuBLAS (normToCublas)
// with the wide LoRA kernels and the fused decode (RoPEStoreKV's kernel) on: the kept norm, the
// q, k and v products on cuBLAS, then lp_lora_rope_store_kv (the wide shrink of the three groups,
// then RoPE + KV store adding each row's deltas to the values it loads). kernels/lora.cu ("LoRA
// RoPE") says why. The answer is a function of the rows, the segment layout and the switches.
func (b *Backend) NormQKVLoRARoPE(q, k, v model.Tensor, in model.NormedInput, ws [3]model.Tensor, segs [3][]model.LoRASeg,
	layer, heads, kvHeads int, table model.Tensor) bool {
	total := len(segs[0]) + len(segs[1]) + len(segs[2])
	if !b.loraRoPE || !b.fusedDecode || total == 0 || !b.normToCublas(in) {
		return false // before any other work: the forward pass offers every adapted layer of every step
	}
	outs := [3]model.Tensor{q, k, v}
	x := in.X
	checkShared("NormQKVLoRARoPE", outs[:], x, ws[:])
	b.checkRoPEStoreKV("NormQKVLoRARoPE", layer, q, k, v, heads, kvHeads, table)
	checkNorm("NormQKVLoRARoPE", in)
	maxRows, maxRank, tmp := 0, 0, 0
	for i := range segs {
		rows, rank, t := checkSegs(outs[i], x, segs[i])
		maxRows, maxRank, tmp = max(maxRows, rows), max(maxRank, rank), tmp+t
	}
	n, hidden := x.Rows, x.Cols
	splits, stride := b.loraWideLayout(hidden, total, maxRows, maxRank)
	if splits == 0 {
		return false // the wide kernels off: their split partials are what the kernel reads
	}
	// As NormGateUpLoRASwiGLU: replays put their segment tables and launch nothing.
	if !b.reserve(&b.xbf, &b.xbfCap, n*hidden, 2) || !b.reserve(&b.kept, &b.keptCap, n*hidden, 4) || b.failed() ||
		!b.reserveSegs(total, max(tmp, splits*stride)) {
		return true
	}
	b.loraRoPEs++
	at, toff := b.segUsed, 0
	for i := range segs {
		toff = b.putSegs(at, segs[i], toff)
		at += len(segs[i])
	}
	seg, ok := b.commitSegs(total)
	if !ok || !b.launch() || !b.keptNorm(in) {
		return true
	}
	b.productsBF16(outs[:], x, ws[:])
	qEnd, kEnd := len(segs[0]), len(segs[0])+len(segs[1])
	b.ok("lora rope_store_kv", C.s_lora_rope_store_kv(ptr(q), ptr(k), ptr(v), C.uintptr_t(b.kcache[layer]), C.uintptr_t(b.vcache[layer]),
		b.meta(b.offPos), b.meta(b.offSlots), ptr(table), C.int(n), C.int(heads), C.int(kvHeads), C.int(b.kv.HeadDim), C.uintptr_t(b.kept), seg,
		C.int(qEnd), C.int(kEnd), C.int(total), C.int(maxRows), C.int(maxRank), C.uintptr_t(b.loraTmp), C.int(hidden), C.int(splits),
		C.int(stride), b.work()))
	return true
}
