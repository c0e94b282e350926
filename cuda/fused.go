//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"fmt"
	"os"
	"strconv"

	"github.com/loraplex/loraplex/model"
)

// Fused decode kernels (kernels/decode_fused.cu, kernels/gemv.cu) and the switches that turn the
// fused paths of issue 15 on and off, so one benchmark run can compare both sides:
//
//	LORAPLEX_FUSED_DECODE=on|off   q/k/v products, RoPE + KV store, gate/up + SiLU in one launch each (DecodeFuser)
//	LORAPLEX_LORA_GROUP=on|off     one LoRA shrink/expand pair for q/k/v and one for gate/up (LoRAGrouper)
//	LORAPLEX_LORA_WIDE=on|off      LoRA shrink over all rank indices of a k-slice per block, split-K (kernels/lora.cu)
//	LORAPLEX_ROUTED_WIDE=on|off    routed (mixture-of-LoRA) shrink on the wide split-K kernel (kernels/lora.cu, route.go)
//	LORAPLEX_ROUTED_FUSED=on|off   with it, the route kernel folded into that shrink: two launches a routed projection
//	LORAPLEX_ROUTED_GROUP=on|off   with both, the routed projections of one input in one launch pair (DeviceGroupRouter, route.go)
//	LORAPLEX_ROUTED_FOLD=on|off    batch-1 routed steps: every expert's shrink rides the base products' launch (RoutedFolder, routefold.go)
//	LORAPLEX_NORM_GEMV=on|off      both (add +) RMSNorms of a layer folded into the GEMVs reading them (NormFuser)
//	LORAPLEX_PDL=off|on|prefetch   programmatic dependent launch of a decode step's kernels (sm_90+; PDL, kernels/common.cuh)
//	LORAPLEX_GEMV_DEEP=on|off      batch-1 GEMVs with twice the weight loads in flight per lane (kernels/gemv.cu)
//	LORAPLEX_GEMV_STREAM=on|off    batch-1 GEMVs load weights without allocating them in L1 (kernels/gemv.cu)
//	LORAPLEX_NORM_STAGE=on|off     batch-1 norm-fused GEMVs stage the normed input in shared memory (kernels/gemv.cu)
//	LORAPLEX_NORM_STAGE_PAIR=on|off  with it, a staged parts launch gives each warp two adjacent columns (kernels/gemv.cu)
//	LORAPLEX_LORA_FOLD=on|off      batch-1 LoRA shrinks ride the base products' GEMV launch, norm folded too (LoRAFolder, lorafold.go)
//	LORAPLEX_DECODE_SPLIT=fill|context|off  decode attention's split rule (kernels/attention.cu)
//	LORAPLEX_DECODE_DEEP=on|off    decode attention may split a row 64 ways instead of 32 (attention.go)
//	LORAPLEX_GQ_FILL_CHUNK=N       the grouped decode kernel's fill rule splits rows into chunks of at least N positions (attention.go)
//	LORAPLEX_GROUPED_DECODE=on|off decode attention one block per GQA group (attention.go)
//	LORAPLEX_GQ_PREFETCH=on|off    with it, each tile's values asked of L2 while its keys are scored (kernels/attention.cu)
//	LORAPLEX_PREFILL_SPLIT=on|off  split-K of short prefill chunks over long cached prefixes (attention.go)
//	LORAPLEX_SWIGLU_BF16=on|off    SwiGLU writes the down projection's bf16 input itself (SiLUMulMatMul)
//	LORAPLEX_ROUTED_BF16=on|off    with it, routed steps too: SwiGLU's bf16 input also feeds the down gate's product (SiLUMulMatMul)
//	LORAPLEX_NORM_BF16=on|off      RMSNorm writes the cuBLAS products' bf16 input itself (NormMatMulShared)
//	LORAPLEX_NORM_KEEP=on|off      with it, adapted steps too: the norm also keeps its fp32 rows for the LoRA shrinks (lorafold.go)
//	LORAPLEX_LORA_SWIGLU=on|off    with it and SwiGLU's bf16 copy, gate/up's LoRA deltas added inside SwiGLU (LoRASwiGLUer, loraswiglu.go)
//	LORAPLEX_LORA_ROPE=on|off      with it and the fused decode, q/k/v's LoRA deltas added inside RoPE + KV store (LoRARoPEer, loraswiglu.go)
//	LORAPLEX_NORM_VEC=on|off       RMSNorm rows of a width divisible by 4 on the float4 kernel (kernels/rmsnorm.cu)
//	LORAPLEX_PREFILL_WIDE=on|off   the tensor-core prefill in 128-row tiles, two m16 row tiles a warp (attention.go)
//	LORAPLEX_SEGMENT_KEEP=on|off   a replay of the segment tables the device holds skips the forward pass's walk (SegmentKeeper, graph.go)
//	LORAPLEX_SEGMENT_MERGE=on|off  adjacent sequences on one adapter share one LoRA segment (SegmentMerger, graph.go)
//	LORAPLEX_GEMM_SKINNY=on|off    products of at most 64 outputs (router gates) at 2-256 rows in one launch of our own (kernels/gemm_skinny.cu, ops.go)
//	LORAPLEX_GATES_BATCHED=on|off  a routed layer's gates of one input (q/k/v's, gate/up's) in one strided-batched cuBLAS call (ops.go)
//	LORAPLEX_ROUTED_EXPERT_MAJOR=on|off  routed calls of >= 2 choices an expert: a plan, then blocks of <= 4 choices of one pass and expert (route.go)
//	LORAPLEX_ROUTE_STAGED=on|off   routing blocks read their row's gate logits and experts from shared memory (kernels/route_row.cuh, route.go)
//	LORAPLEX_ROUTED_ROWS=on|off|N  routed calls of > SMs/2 (or >= N) (row, member) pairs: one routing shrink block a row and member, one split (kernels/lora.cu, route.go)
//	LORAPLEX_ROUTE_FIRST=on|off    one projection's routed calls of >= 64 rows: the route kernel, then the wide routed shrink (route.go)
//	LORAPLEX_PRODUCTS_FORK=on|off|N  products calls of <= 256 (or N) rows dealt to side streams, joined before the next op (fork.go)
//	LORAPLEX_FORK_BESIDE=on|off    with it, a routed group's routing shrinks run beside the products' side streams (fork.go)
//
// Unset (or any other value) keeps the default. Each default follows a benchmark run that
// compared both sides after the kernels' GPU tests had passed (TestFusedMatMulShared,
// TestFusedRoPEStoreKV, TestFusedGateUpSiLU, TestLoRAGroupSweep, TestDecodeSplitRules,
// TestContextSplitGraphsMatchDirect, TestFusedFixturesCUDA; bench/results/gpu-goals-h100.md):
// fused decode on (H100, two runs: batch-1 decode 1.04x, batch 64 1.01x, 64 rank-16 adapters
// 1.03-1.05x, nothing slower); grouped LoRA on since the third run, which measured what the first
// two did not (1.07x then 1.00x on 64 rank-16 adapters, inside the noise): one rank-8 adapter at
// batch 1, where launches are the cost, 1.10x, and 64 rank-16 adapters 1.04x; norm-fused
// GEMVs on (TestNormGEMV and the fixture suites with them on passed on an H100; then batch-1
// decode 1.055x at ctx 128, 1.058x at 4k, 1.042x at 32k, batch 64 1.01x: they only take batch-1
// steps without LoRA on q/k/v or gate/up, so the adapter rows cannot move; bench/results/gpu-h100/
// goals-2026-12-07-ab2); wide LoRA on (TestLoRAWideSweep and the fixture suites with it on passed;
// 64 rank-16 adapters 1.13x, one rank-8 adapter at batch 1 1.18x, rank-8 q/v 0.99x); SwiGLU with
// the bf16 copy on (2k prefill 1.04x, 8k 1.03x against it off). Programmatic dependent launch
// and the deep GEMV streams stay off: their tests passed (TestPDLBitwise, TestGEMVDeepBitwise),
// and the A/B run measured PDL at 1.00x on batch-1 decode at ctx 128 and 0.93x at 32k (prefetch
// the same), deep streams 0.94x (bench/results/gpu-h100/goals-2026-12-07-ab3).
const (
	fusedDecodeDefault = true
	loraGroupDefault   = true
	loraWideDefault    = true
	// routedWideDefault, routedFusedDefault: on after one A/B run on an H100
	// (bench/results/gpu-h100/goals-2026-12-07-ab4): routed top-2 of 28 experts 1.091x at batch 1
	// and 1.067x at 64 with the wide shrink, 1.104x and 1.094x with the route folded in too;
	// the rows without routers within noise. Their GPU tests passed on an H100
	// (goals-2026-12-07-final3/suite.txt: TestRoutedWideSweep and the routed suites).
	routedWideDefault  = true
	routedFusedDefault = true
	// routedGroupDefault, routedFoldDefault: on. Written without a GPU from Nsight Compute's
	// batch-1 routed step (goals-2026-12-07-s25c/prof-routed1.txt: 12-13 us a routing shrink and
	// 7-8 us a routed expand, 7 of each a layer, latency that the members of q/k/v and of gate/up
	// can share in one launch each; folded, no routing shrink launch remains at batch 1). Their
	// tests passed on an H100 (TestRoutedGroup*, TestRoutedFold*), and one A/B run there measured
	// both together at 1.261x on routed decode at batch 1 and 1.033x at 64, the rows without
	// routers within noise (bench/results/gpu-h100/goals-2026-12-07-s26a).
	routedGroupDefault = true
	routedFoldDefault  = true
	normGEMVDefault    = true
	pdlDefault         = PDLOff
	gemvDeepDefault    = false
	// gemvStreamDefault: on after one A/B run on an H100 (goals-2026-12-07-ab4): batch-1 decode
	// 1.035x at ctx 128, 1.014x at 4k, 1.010x at 32k, one rank-8 adapter at batch 1 1.084x,
	// routed batch 1 1.077x; batch 64 (no batch-1 GEMVs) within noise. TestGEMVDeepBitwise holds
	// it to bitwise the same products.
	gemvStreamDefault = true
	// normStageDefault: on. Written without a GPU from Nsight Compute's figures for the batch-1
	// q/k/v launch (L1 78% busy at 1.46 TB/s of weights; kernels/gemv.cu says why staging helps);
	// TestNormGEMV's staged cases passed on an H100, and one A/B run there measured batch-1
	// decode 1.039x at ctx 128, 1.041x at 4k, 1.030x at 32k, every other row within noise
	// (bench/results/gpu-h100/goals-2026-12-07-s25a).
	normStageDefault = true
	// normStagePairDefault: on. Written without a GPU from Nsight Compute's staged q/k/v launch
	// at 1.6 TB/s (goals-2026-12-07-s25b/prof-fold-on.txt), whose 768 blocks (1.17 waves) each
	// read the whole normed row before their first product. On an H100 TestGEMVDeepBitwise
	// (bitwise the unpaired staged products) and TestNormGEMV passed, and one A/B run measured
	// batch-1 decode 1.029x at ctx 128 (174.4 against 169.4 tok/s: 0.866 of the roofline), 1.032x
	// at 4k, 1.017x at 32k, one rank-8 adapter at batch 1 1.041x, the rest within noise
	// (bench/results/gpu-h100/goals-2026-12-08-s30a).
	normStagePairDefault = true
	// loraFoldDefault: on. Written without a GPU from goals-2026-12-07-s24b, where one rank-8
	// adapter at batch 1 cost 0.74 of the base (the norms that stop folding, eight latency-bound
	// LoRA launches a layer, of which folding keeps four). On an H100 TestLoRAFoldGraphReplay and
	// the fixture suites passed with it (bench/results/gpu-h100/goals-2026-12-07-s25b), and the
	// A/B there measured one rank-8 adapter at batch 1 1.074x, routed decode 1.02x at batch 1
	// and 64, the rest within noise; TestLoRAFoldSweep passed in -s25c, whose A/B with it off
	// agrees (one adapter at batch 1 0.933x off). Before the staged norm it lost (0.922x in
	// -s25a): the unstaged norm-fused parts kernel is L1-bound at gate/up's width, the staged
	// one is not.
	loraFoldDefault   = true
	swigluBF16Default = true
	// normBF16Default: on. Its GPU tests pass (TestNormBF16, the fixture suites with it on;
	// goals-2026-12-07-final3/suite.txt) and two A/B runs on H100s measured prefill 2k 1.030x and
	// 1.026x, 8k 1.012x and 1.028x, batch-64 decode 1.015x (goals-2026-12-07-ab4, -s24a; batch 1
	// and steps with LoRA on the products do not take it).
	normBF16Default = true
	// normKeepDefault, loraSwiGLUDefault, loraRoPEDefault: on. Written without a GPU: an adapted
	// step of more than gemvRows rows declined NormMatMulShared (its LoRA shrinks read the normed
	// rows), so each of its layers ran two conversion passes the base model's steps no longer
	// make; and gate/up's and q/k/v's expands read and wrote both products' outputs (14.7 MB a
	// layer at batch 64 for gate/up, 470 MB at a 2,048-row prefill) right before SwiGLU or RoPE
	// read them again. Their tests passed on an H100 (TestNormKeptProducts bitwise the unfused
	// path, TestLoRASwiGLU, TestLoRARoPE, their replay and fixture tests), and one A/B run there
	// measured the three together at 1.040x on 64 rank-16 adapters at batch 64 (0.924 of the
	// byte-bound ceiling), 1.038x on 64 rank-8 q/v adapters and 1.129x on a 2,048-token prefill
	// on one rank-16 adapter, every other row within noise; the kept norm alone within noise
	// (bench/results/gpu-h100/goals-2026-12-07-s26a).
	normKeepDefault   = true
	loraSwiGLUDefault = true
	loraRoPEDefault   = true
	// normVecDefault: on. TestRMSNormSweep holds it to the CPU (H200: its first bound failed in
	// goals-2026-12-07-s24c/suite.txt, the corrected one passed in call5-focus.txt there);
	// two A/B runs on an H200 measured batch-64 decode 1.087x and 1.093x, 64 rank-16 adapters
	// 1.038x and 1.054x, deterministic mode at batch 64 1.087x and 1.098x, batch 1 unchanged
	// (it runs the norm inside the GEMVs) (goals-2026-12-07-s24c, -s24d).
	normVecDefault = true
)

// envInt reads an integer knob from the environment: def when unset, not a number or outside
// [lo, hi].
func envInt(name string, def, lo, hi int) int {
	v, err := strconv.Atoi(os.Getenv(name))
	if err != nil || v < lo || v > hi {
		return def
	}
	return v
}

// envSwitch reads an on/off switch from the environment.
func envSwitch(name string, def bool) bool {
	switch os.Getenv(name) {
	case "on":
		return true
	case "off":
		return false
	}
	return def
}

var _ model.DecodeFuser = (*Backend)(nil)

// SetFusedDecode turns the fused decode kernels on or off for the following steps (for tests
// and benchmarks that compare both paths). Recorded graphs hold the other path's launches, so
// they are dropped.
func (b *Backend) SetFusedDecode(on bool) {
	setSwitch(b, &b.fusedDecode, on)
}

// gemvPartsArgs are the weights, outputs and the parts' column ends of a shared-input launch
// (lp_gemv_parts_bf16, lp_gemm_invariant_parts_bf16), for the shim that fills lp_gemv_parts
// (kept in the backend: a cgo call would move stack arrays to the heap every call).
type gemvPartsArgs struct {
	ws, wsrcs, ys, ends [gemvPartsMax]C.uintptr_t // wsrcs: folded LoRA shrinks' A addresses (lorafold.go)
}

// set fills a with the products outs[i] = x · ws[i]ᵀ, part after part, none read through a
// segment table.
func (a *gemvPartsArgs) set(outs, ws []model.Tensor) *gemvPartsArgs {
	end := 0
	a.wsrcs = [gemvPartsMax]C.uintptr_t{}
	for i, w := range ws {
		end += w.Rows
		a.ws[i], a.ys[i], a.ends[i] = ptr(w), ptr(outs[i]), C.uintptr_t(end)
	}
	return a
}

// checkShared panics unless outs[i] = x · ws[i]ᵀ are products MatMul takes, and reports whether
// every weight is non-empty and 16-byte aligned (the GEMV's vector loads).
func checkShared(what string, outs []model.Tensor, x model.Tensor, ws []model.Tensor) (aligned bool) {
	if len(outs) != len(ws) {
		panic(fmt.Sprintf("cuda: %s of %d outputs with %d weights", what, len(outs), len(ws)))
	}
	aligned = true
	for i, w := range ws {
		out := outs[i]
		if x.Cols != w.Cols || out.Rows != x.Rows || out.Cols != w.Rows || w.DType != model.BF16 || x.DType != model.F32 || out.DType != model.F32 {
			panic(fmt.Sprintf("cuda: %s out %s = x %s · wᵀ %s (%s)", what, out.Shape(), x.Shape(), w.Shape(), w.DType))
		}
		aligned = aligned && uintptr(ptr(w))%16 == 0 && w.Rows > 0
	}
	return aligned
}

// MatMulShared implements model.SharedMatMuler for the products MatMul sends to the GEMV kernel (at
// most gemvRows rows, aligned): the products of one input (q/k/v, gate/up) in one launch, each
// part bitwise what its own GEMV gives; for bigger steps, one bf16 conversion of x for all
// the cuBLAS products. In deterministic mode off the rows kernel (padded cuBLAS, tensor cores) it
// is invariantShared, for any row count; on the rows kernel, bigger steps take MatMul's path
// (false).
func (b *Backend) MatMulShared(outs []model.Tensor, x model.Tensor, ws []model.Tensor) bool {
	aligned := checkShared("MatMulShared", outs, x, ws) && x.Cols%8 == 0 && uintptr(ptr(x))%16 == 0
	if b.invariantProducts() {
		return b.invariantShared(outs, x, ws)
	}
	if x.Rows == 0 || x.Rows > b.gemvRows && b.batchInvariant {
		return false
	}
	if x.Rows > b.gemvRows {
		// The rows MatMul gives cuBLAS: x is converted to bf16 once for all the products
		// instead of once per product (q/k/v: three conversions of the same activations,
		// gate/up two), and each product is the call MatMul makes, so the outputs are bitwise
		// MatMul's. The products the skinny kernel takes (routers' gates riding beside q/k/v
		// or gate/up: model.MaxSharedProducts) are one launch of it after cuBLAS's, as parts.
		// With LORAPLEX_GATES_BATCHED, gates that lie one after another (gateRun) are one
		// strided-batched cuBLAS call first, within cuBLAS's rounding of MatMul's.
		if b.launch() && b.xToBF16(x) {
			b.productsBF16(outs, x, ws)
		}
		return true
	}
	if !b.fusedDecode || !aligned || len(ws) > gemvPartsMax {
		return false
	}
	if !b.launch() {
		return true
	}
	a := b.gemvArgs.set(outs, ws)
	b.ok("gemv parts", C.s_gemv_parts(C.int(x.Rows), C.int(x.Cols), ptr(x), &a.ws[0], nil, &a.ys[0], &a.ends[0], C.int(len(ws)), b.gemvOpts(ws...), b.work()))
	return true
}

// productsBF16 makes outs[i] = x · ws[i]ᵀ for every i from x as xToBF16 left it in xbf (or a
// kernel that wrote it there): runs of gates laid out one after another as one strided-batched
// call each (gateRun), the products the skinny kernel takes as one launch of parts after
// cuBLAS's, the others as MatMul's cuBLAS call (productBF16). Every cuBLAS-sized step's products
// of one input come here, so LORAPLEX_PRODUCTS_FORK deals them to its lanes in this one place
// (fork.go): the gates and the skinny launch on the stream, the rest on the lanes.
func (b *Backend) productsBF16(outs []model.Tensor, x model.Tensor, ws []model.Tensor) {
	a, skinny, end := &b.gemvArgs, 0, 0
	a.wsrcs = [gemvPartsMax]C.uintptr_t{}
	gates := 0
	for _, w := range ws {
		if isGate(w) {
			gates++
		}
	}
	f := b.fork(x.Rows, gates)
	for i := 0; i < len(ws); i++ {
		w := ws[i]
		if run := b.gateRun(outs[i:], ws[i:]); run > 1 {
			b.batchedProducts += run
			b.ok("gemm batched", C.s_gemm_batched(f.next(true).blas, C.int(x.Rows), C.int(w.Rows), C.int(x.Cols), C.uintptr_t(b.xbf), ptr(w),
				C.longlong(w.Rows*w.Cols), ptr(outs[i]), C.longlong((uintptr(ptr(outs[i+1]))-uintptr(ptr(outs[i])))/4), C.int(run)))
			i += run - 1
			continue
		}
		if skinny == gemvPartsMax || !b.skinnyTakes(x, w) {
			b.productOn(f.next(isGate(w)), outs[i], x, w, 1, 0)
			continue
		}
		end += w.Rows
		a.ws[skinny], a.ys[skinny], a.ends[skinny] = ptr(w), ptr(outs[i]), C.uintptr_t(end)
		skinny++
	}
	if skinny > 0 {
		b.skinnyProducts += skinny
		b.ok("gemm skinny parts", C.s_gemm_skinny_parts(C.int(x.Rows), C.int(x.Cols), C.uintptr_t(b.xbf), &a.ws[0], &a.ys[0], &a.ends[0],
			C.int(skinny), b.stream)) // beside the lanes: gates, which read only xbf
	}
	f.leave()
}

// RoPEStoreKV implements model.DecodeFuser: RoPE of q and k and the KV store in one launch, for
// steps of any size (prefill chunks gain less, but lose nothing).
func (b *Backend) RoPEStoreKV(layer int, q, k, v model.Tensor, heads, kvHeads int, table model.Tensor) bool {
	if !b.fusedDecode {
		return false
	}
	b.checkRoPEStoreKV("RoPEStoreKV", layer, q, k, v, heads, kvHeads, table)
	d := b.kv.HeadDim
	n := len(b.step.Positions)
	if !b.launch() || n == 0 {
		return true
	}
	b.ok("rope_store_kv", C.s_rope_store_kv(ptr(q), ptr(k), ptr(v), C.uintptr_t(b.kcache[layer]), C.uintptr_t(b.vcache[layer]),
		b.meta(b.offPos), b.meta(b.offSlots), ptr(table), C.int(n), C.int(heads), C.int(kvHeads), C.int(d), b.pdlLaunch(), b.work()))
	return true
}

// checkRoPEStoreKV panics unless q, k and v are the step's rows of heads and kvHeads heads of the
// cache's head dim, layer has a cache and the rotary table covers every position of the step.
func (b *Backend) checkRoPEStoreKV(what string, layer int, q, k, v model.Tensor, heads, kvHeads int, table model.Tensor) {
	d := b.kv.HeadDim
	n, width := len(b.step.Positions), b.kv.KVHeads*d
	if kvHeads != b.kv.KVHeads || heads <= 0 || heads%kvHeads != 0 || q.Rows != n || q.Cols != heads*d || k.Rows != n ||
		v.Rows != n || k.Cols != width || v.Cols != width || len(b.step.Slots) != n || table.Cols != d ||
		layer < 0 || layer >= len(b.kcache) || q.DType != model.F32 || k.DType != model.F32 || v.DType != model.F32 {
		panic(fmt.Sprintf("cuda: %s layer %d q %s k %s v %s heads %d/%d dim %d table %s for %d rows",
			what, layer, q.Shape(), k.Shape(), v.Shape(), heads, kvHeads, d, table.Shape(), n))
	}
	for _, p := range b.step.Positions {
		if int(p) >= table.Rows {
			panic(fmt.Sprintf("cuda: %s position %d beyond the table's %d", what, p, table.Rows))
		}
	}
}

// checkGateUp panics unless act = silu(x · wGateᵀ) * (x · wUpᵀ) has matching shapes and types.
func checkGateUp(what string, act, x, wGate, wUp model.Tensor) {
	if x.Cols != wGate.Cols || x.Cols != wUp.Cols || wGate.Rows != wUp.Rows || act.Rows != x.Rows || act.Cols != wGate.Rows ||
		wGate.DType != model.BF16 || wUp.DType != model.BF16 || x.DType != model.F32 || act.DType != model.F32 {
		panic(fmt.Sprintf("cuda: %s act %s = x %s · gate %s, up %s", what, act.Shape(), x.Shape(), wGate.Shape(), wUp.Shape()))
	}
}

// GateUpSiLU implements model.DecodeFuser for the products MatMul sends to the GEMV kernel (at
// most gemvRows rows, aligned): both products and SwiGLU in one launch. Bigger steps go to
// cuBLAS unfused (false), where the products dominate and one launch more is noise.
func (b *Backend) GateUpSiLU(act, x, wGate, wUp model.Tensor) bool {
	checkGateUp("GateUpSiLU", act, x, wGate, wUp)
	if !b.fusedDecode || b.invariantProducts() || x.Rows == 0 || x.Rows > b.gemvRows || x.Cols%8 != 0 ||
		uintptr(ptr(x))%16 != 0 || uintptr(ptr(wGate))%16 != 0 || uintptr(ptr(wUp))%16 != 0 {
		return false
	}
	if !b.launch() {
		return true
	}
	b.ok("gemv_swiglu", C.s_gemv_swiglu(C.int(x.Rows), C.int(wGate.Rows), C.int(x.Cols), ptr(x), ptr(wGate), ptr(wUp), ptr(act), b.gemvOpts(wGate, wUp), b.work()))
	return true
}

// PDL chooses how the kernels of a decode step are launched (kernels/common.cuh has the
// mechanism and its rules; LORAPLEX_PDL, SetPDL). It changes when kernels start, never what
// they compute.
type PDL int

const (
	// PDLOff launches every kernel once the one before it has ended.
	PDLOff PDL = iota
	// PDLOn launches with programmatic dependent launch every kernel of the launchers that take
	// it, in any step: the GEMVs (up to gemvRows rows, plain and norm-fused), the norms, the
	// biases, the row gather, RoPE + KV store, decode attention and its merge; each starts its
	// blocks while the kernel before it drains (the GEMVs issue their first weight loads) and
	// waits for it on the device. cuBLAS, LoRA and prefill-attention kernels launch as before.
	PDLOn
	// PDLPrefetch is PDLOn, and the batch-1 GEMVs whose weights fit in L2 beside a short
	// context's K/V (pdlPrefetchMaxBytes, pdlPrefetchKVBytes) also prefetch their rows there
	// before they wait.
	PDLPrefetch
)

func (p PDL) String() string {
	switch p {
	case PDLOff:
		return "off"
	case PDLOn:
		return "on"
	case PDLPrefetch:
		return "prefetch"
	}
	return fmt.Sprintf("PDL(%d)", int(p))
}

// pdlFromEnv reads LORAPLEX_PDL (off, on or prefetch; anything else keeps the default).
func pdlFromEnv() PDL {
	for _, p := range []PDL{PDLOff, PDLOn, PDLPrefetch} {
		if os.Getenv("LORAPLEX_PDL") == p.String() {
			return p
		}
	}
	return pdlDefault
}

// pdlPrefetchMaxBytes and pdlPrefetchKVBytes bound what PDLPrefetch has a GEMV prefetch into L2
// before it waits: a product of at most pdlPrefetchMaxBytes of weights, in a step whose decode
// attention reads at most pdlPrefetchKVBytes of K/V a layer (longer contexts would evict the
// prefetched rows before the GEMV reads them, and keep HBM busy anyway). sm_90 parts have 50 MB
// of L2 (H100, H200); 36 + 8 MiB leave room for the step's activations. In the Llama-3-8B shape
// that takes the o projection (32 MiB, behind decode attention, which leaves HBM idle at short
// contexts) up to 2,048 keys of context, never its q/k/v (48 MiB, behind the down projection's
// stream) or gate/up and down (224 and 112 MiB).
const (
	pdlPrefetchMaxBytes = 36 << 20
	pdlPrefetchKVBytes  = 8 << 20
)

// prefetchL2 reports whether this step's batch-1 GEMVs may prefetch into L2 (PDLPrefetch and a
// short enough context; the GEMV's own bound is gemvOpts'). A recorded step holds the choice,
// so BeginStep adds it to the graph key.
func (b *Backend) prefetchL2() bool {
	return b.pdl == PDLPrefetch && b.rowKeys*b.kv.KVHeads*b.kv.HeadDim*4 <= pdlPrefetchKVBytes
}

// SetPDL chooses how the following steps launch their kernels. Below sm_90 (no programmatic
// dependent launch) every mode launches as PDLOff. Recorded graphs hold the other launches'
// edges, so they are dropped.
func (b *Backend) SetPDL(p PDL) {
	if p < PDLOff || p > PDLPrefetch {
		panic(fmt.Sprintf("cuda: SetPDL(%d)", int(p)))
	}
	if !b.pdlCapable {
		p = PDLOff
	}
	setSwitch(b, &b.pdl, p)
}

// SetGEMVDeep turns the batch-1 GEMVs' deeper weight streams (LP_GEMV_DEEP, kernels/gemv.cu:
// eight 16-byte loads in flight per lane instead of four, bitwise the same results) on or off
// for the following steps; recorded graphs hold the other kernels, so they are dropped.
func (b *Backend) SetGEMVDeep(on bool) {
	setSwitch(b, &b.gemvDeep, on)
}

// SetGEMVStream turns the batch-1 GEMVs' L1-bypassing weight loads (LP_GEMV_STREAM,
// kernels/gemv.cu: the weights, read once a step, leave x in L1; bitwise the same results) on or
// off for the following steps; recorded graphs hold the other kernels, so they are dropped.
func (b *Backend) SetGEMVStream(on bool) {
	setSwitch(b, &b.gemvStream, on)
}

// pdlLaunch is the pdl argument of a launcher of kernels that stream no weights.
func (b *Backend) pdlLaunch() C.int {
	if b.pdl == PDLOff {
		return 0
	}
	return 1
}

// gemvOpts are the launch options (LP_GEMV_* flags) of a batch-1 GEMV launch that streams ws:
// PDL under PDLOn and PDLPrefetch, the L2 prefetch too when prefetchL2 and they fit
// pdlPrefetchMaxBytes, the deep streams with SetGEMVDeep, the L1-bypassing loads with SetGEMVStream,
// the staged norm-fused launches with SetNormStage.
func (b *Backend) gemvOpts(ws ...model.Tensor) C.int {
	var opts C.int
	if b.pdl != PDLOff {
		opts |= C.LP_GEMV_PDL
	}
	if b.prefetchL2() {
		bytes := 0
		for _, w := range ws {
			bytes += 2 * w.Rows * w.Cols
		}
		if bytes <= pdlPrefetchMaxBytes {
			opts |= C.LP_GEMV_PREFETCH
		}
	}
	if b.gemvDeep {
		opts |= C.LP_GEMV_DEEP
	}
	if b.gemvStream {
		opts |= C.LP_GEMV_STREAM
	}
	if b.normStage {
		opts |= C.LP_GEMV_STAGE
	}
	if b.normStagePair {
		opts |= C.LP_GEMV_STAGE_PAIR
	}
	return opts
}

var _ model.NormFuser = (*Backend)(nil)

var _ model.SiLUMulMatMuler = (*Backend)(nil)

// SiLUMulMatMul implements model.SiLUMulMatMuler for the products MatMul sends to cuBLAS (more
// than gemvRows rows, default mode): lp_silu_mul_bf16 writes act in fp32 and its bf16 rounding
// into xbf, where xToBF16 would have put it, and the down projection's GEMM reads it from there.
// That saves the conversion pass over act (at a 2,048-row prefill step of the Llama-3-8B shape,
// 117 MB read and 58 MB written a layer; at batch-64 decode, one launch a layer). The
// activation and the rounding are the unfused kernels' arithmetic, so act and the products are
// bitwise SiluMul's and MatMulShared's (TestSiLUMulMatMul). A routed step's call with the down
// gate's product beside the projection's is taken with LORAPLEX_ROUTED_BF16 (routedBF16Default);
// one whose down gate does not ride (routers differing within the step) is the plain call.
// Few-row steps keep the GEMV path (fp32 x, nothing to convert) and deterministic mode its own
// products: false.
func (b *Backend) SiLUMulMatMul(outs []model.Tensor, act, gate, up model.Tensor, ws []model.Tensor) bool {
	if act.Rows != gate.Rows || act.Rows != up.Rows || act.Cols != gate.Cols || act.Cols != up.Cols || act.DType != model.F32 ||
		gate.DType != model.F32 || up.DType != model.F32 {
		panic(fmt.Sprintf("cuda: SiLUMulMatMul act %s gate %s up %s", act.Shape(), gate.Shape(), up.Shape()))
	}
	checkShared("SiLUMulMatMul", outs, act, ws)
	if !b.swigluBF16 || b.batchInvariant || act.Rows <= b.gemvRows || len(ws) > 1 && !b.routedBF16 {
		return false
	}
	n := act.Rows * act.Cols
	if !b.launch() || !b.reserve(&b.xbf, &b.xbfCap, n, 2) {
		return true
	}
	if len(ws) > 1 {
		b.routedBF16s++
	}
	if b.ok("silu_mul_bf16", C.s_silu_mul_bf16(ptr(act), C.uintptr_t(b.xbf), ptr(gate), ptr(up), C.size_t(n), b.work())) {
		b.productsBF16(outs, act, ws)
	}
	return true
}

// SetSwiGLUBF16 turns SiLUMulMatMul on or off for the following steps (its launches differ from
// the unfused ops', so recorded graphs are dropped).
func (b *Backend) SetSwiGLUBF16(on bool) {
	setSwitch(b, &b.swigluBF16, on)
}

// SetRoutedBF16 turns the routed steps' SiLUMulMatMul calls (the down gate's product beside the
// down projection's) on or off for the following steps; recorded graphs are dropped.
func (b *Backend) SetRoutedBF16(on bool) { setSwitch(b, &b.routedBF16, on) }

// RoutedBF16Count is the number of routed calls LORAPLEX_ROUTED_BF16 has taken: kept norms and
// SwiGLU calls with the down gate beside (for tests).
func (b *Backend) RoutedBF16Count() int { return b.routedBF16s }

// routedBF16Default: off until a GPU run has measured it. Written without a GPU from
// goals-2026-12-07-s27a call 2's Nsight view of a routed batch-64 step: its SwiGLU was silu_mul
// then a conversion pass for the down products (7.6 + 5.3 us a layer) where the other steps
// write the bf16 input in SwiGLU's own launch. Its tests passed on an H100 (TestNormKeptMatMulShared,
// TestSiLUMulMatMulRouted, TestRoutedBF16Fixtures: bench/results/gpu-h100/goals-2026-12-08-s30a).
const routedBF16Default = false

// SetNormGEMV turns the norm-fused GEMVs (NormFuser, kernels/gemv.cu) on or off for the
// following steps, independently of SetFusedDecode; recorded graphs hold the other path's
// launches, so they are dropped.
func (b *Backend) SetNormGEMV(on bool) {
	setSwitch(b, &b.normGEMV, on)
}

// overlaps reports whether two F32 tensors share device memory.
func overlaps(a, c model.Tensor) bool {
	pa, pc := uintptr(ptr(a)), uintptr(ptr(c))
	return pa < pc+uintptr(4*c.Rows*c.Cols) && pc < pa+uintptr(4*a.Rows*a.Cols)
}

// normInput panics unless in is a well-formed NormedInput (a bug in the forward pass, not input)
// and reports whether the norm-fused GEMV kernels take it, with the device pointers of its
// delta and next (0 without a residual add): the switch on, not in deterministic mode (there
// every product takes the batch-invariant kernel at any row count, and these would make a
// row's bits depend on the batch's size), 1 to gemvRows rows (the GEMV path's, so the norm folds
// exactly where MatMul would stream the weights), the GEMV's alignment for every input.
func (b *Backend) normInput(what string, in model.NormedInput) (delta, next C.uintptr_t, ok bool) {
	x, add := in.X, in.Delta.Rows > 0
	checkNorm(what, in)
	if !b.normGEMV || b.batchInvariant || x.Rows == 0 || x.Rows > b.gemvRows || x.Cols%8 != 0 ||
		uintptr(ptr(x))%16 != 0 || uintptr(ptr(in.Weight))%16 != 0 {
		return 0, 0, false
	}
	if add {
		delta, next = ptr(in.Delta), ptr(in.Next)
	}
	return delta, next, delta%16 == 0 && next%16 == 0
}

// NormMatMulShared implements model.NormFuser for the products MatMulShared gives the parts
// GEMV: the norm (and the residual add) folded into one launch of the q/k/v products, each
// part within rounding of lp_add_rmsnorm + its own GEMV (kernels/gemv.cu bounds it).
func (b *Backend) NormMatMulShared(outs []model.Tensor, in model.NormedInput, ws []model.Tensor) bool {
	aligned := checkShared("NormMatMulShared", outs, in.X, ws)
	if b.normToCublas(in) {
		return b.normCublas(outs, in, ws)
	}
	delta, next, ok := b.normInput("NormMatMulShared", in)
	if !ok || !aligned || len(ws) > gemvPartsMax {
		return false
	}
	if !b.launch() {
		return true
	}
	a := b.gemvArgs.set(outs, ws)
	b.ok("norm gemv parts", C.s_norm_gemv_parts(C.int(in.X.Rows), C.int(in.X.Cols), ptr(in.X), delta, next, ptr(in.Weight), C.float(in.Eps),
		&a.ws[0], nil, &a.ys[0], &a.ends[0], C.int(len(ws)), b.gemvOpts(ws...), b.work()))
	return true
}

// checkNorm panics unless in's shapes and types fit a norm-fused call: x, the norm weight and,
// with a residual add, delta and next the same shape as x, next overlapping neither.
func checkNorm(what string, in model.NormedInput) {
	x, add := in.X, in.Delta.Rows > 0
	if x.DType != model.F32 || in.Weight.DType != model.F32 || in.Weight.Rows != 1 || in.Weight.Cols != x.Cols ||
		add && (in.Delta.Rows != x.Rows || in.Delta.Cols != x.Cols || in.Next.Rows != x.Rows || in.Next.Cols != x.Cols ||
			in.Delta.DType != model.F32 || in.Next.DType != model.F32 || overlaps(in.Next, x) || overlaps(in.Next, in.Delta)) {
		panic(fmt.Sprintf("cuda: %s of x %s + delta %s into %s, norm weight %s", what, x.Shape(), in.Delta.Shape(), in.Next.Shape(), in.Weight.Shape()))
	}
}

// normToCublas reports whether NormMatMulShared takes in's rows to cuBLAS (normCublas): more
// rows than the GEMV kernel reads, default mode, LORAPLEX_NORM_BF16 on. A function of the row
// count and the backend's switches, as the step key needs.
func (b *Backend) normToCublas(in model.NormedInput) bool {
	return b.normBF16 && !b.batchInvariant && in.X.Rows > b.gemvRows
}

// normCublas is NormMatMulShared for the products MatMul gives cuBLAS: lp_rmsnorm_bf16 writes
// the normed rows, rounded to bf16, where xToBF16 would have put them (and the residual sum to
// in.Next), and each product is the cuBLAS call MatMul makes from there. That saves the pass
// converting the fp32 normed rows (at a 2,048-row prefill step of the 8B shape, 32 MB read and
// 16 MB written, before q/k/v and again before gate/up) and their fp32 store; the products are
// bitwise the unfused AddRMSNorm + MatMulShared's (TestNormBF16).
func (b *Backend) normCublas(outs []model.Tensor, in model.NormedInput, ws []model.Tensor) bool {
	x, add := in.X, in.Delta.Rows > 0
	checkNorm("NormMatMulShared", in)
	n := x.Rows * x.Cols
	if !b.launch() || !b.reserve(&b.xbf, &b.xbfCap, n, 2) {
		return true
	}
	var delta, next C.uintptr_t
	if add {
		delta, next = ptr(in.Delta), ptr(in.Next)
	}
	if b.ok("rmsnorm_bf16", C.s_rmsnorm_bf16(ptr(x), delta, next, C.uintptr_t(b.xbf), 0, ptr(in.Weight), C.int(x.Rows), C.int(x.Cols), C.float(in.Eps), b.normOpts(), b.work())) {
		b.productsBF16(outs, x, ws)
	}
	return true
}

// SetNormBF16 turns normCublas on or off for the following steps (its launches differ from the
// unfused ops', so recorded graphs are dropped).
func (b *Backend) SetNormBF16(on bool) {
	setSwitch(b, &b.normBF16, on)
}

// SetNormStage turns the staged norm-fused GEMVs (LP_GEMV_STAGE, kernels/gemv.cu: the normed
// input computed once a block into shared memory) on or off for the following steps; recorded
// graphs hold the other kernels, so they are dropped.
func (b *Backend) SetNormStage(on bool) {
	setSwitch(b, &b.normStage, on)
}

// SetNormStagePair turns the two-column warps of the staged parts launches
// (LORAPLEX_NORM_STAGE_PAIR) on or off for the following steps.
func (b *Backend) SetNormStagePair(on bool) {
	setSwitch(b, &b.normStagePair, on)
}

// NormStaged reports whether a norm-fused GEMV of rows rows of width k takes the staged kernels
// under the backend's switches now (kernels/gemv.cu's rule; for tests).
func (b *Backend) NormStaged(rows, k int) bool {
	return C.lp_norm_gemv_staged(C.int(rows), C.int(k), b.gemvOpts()) != 0
}

// SetNormVec lets the RMSNorm launches take the float4 kernel (LP_NORM_VEC, kernels/rmsnorm.cu)
// or keeps them on the scalar loop, for the following steps (recorded graphs hold the other
// kernel, so they are dropped).
func (b *Backend) SetNormVec(on bool) {
	setSwitch(b, &b.normVec, on)
}

// normOpts are the RMSNorm launches' options (LP_NORM_* flags): PDL as pdlLaunch says, the float4
// kernel with SetNormVec.
func (b *Backend) normOpts() C.int {
	var opts C.int
	if b.pdlLaunch() != 0 {
		opts |= C.LP_NORM_PDL
	}
	if b.normVec {
		opts |= C.LP_NORM_VEC
	}
	return opts
}

// NormGateUpSiLU implements model.NormFuser: the norm (and the residual add), both products and
// SwiGLU in one launch, within rounding of lp_add_rmsnorm + lp_gemv_swiglu_bf16.
func (b *Backend) NormGateUpSiLU(act model.Tensor, in model.NormedInput, wGate, wUp model.Tensor) bool {
	checkGateUp("NormGateUpSiLU", act, in.X, wGate, wUp)
	delta, next, ok := b.normInput("NormGateUpSiLU", in)
	if !ok || uintptr(ptr(wGate))%16 != 0 || uintptr(ptr(wUp))%16 != 0 {
		return false
	}
	if !b.launch() {
		return true
	}
	b.ok("norm gemv swiglu", C.s_norm_gemv_swiglu(C.int(in.X.Rows), C.int(wGate.Rows), C.int(in.X.Cols), ptr(in.X), delta, next, ptr(in.Weight),
		C.float(in.Eps), ptr(wGate), ptr(wUp), ptr(act), b.gemvOpts(wGate, wUp), b.work()))
	return true
}

var _ model.LoRAGrouper = (*Backend)(nil)

// loraGroupArgs are lp_lora_group's outputs, their widths and the groups' ends in the segment
// table, for the shim that fills lp_lora_outs.
type loraGroupArgs struct {
	outs, dims, ends [loraGroupMax]C.uintptr_t
}

// SetLoRAGroup turns the grouped LoRA launches on or off for the following steps (recorded
// graphs hold the other path's launches, so they are dropped).
func (b *Backend) SetLoRAGroup(on bool) {
	setSwitch(b, &b.loraGroup, on)
}

// LoRAGroup implements model.LoRAGrouper: the segments of up to LP_LORA_GROUP projections that
// read x go into the ring one group after the other, with disjoint scratch, and one shrink
// and one expand launch cover them all (kernels/lora.cu).
func (b *Backend) LoRAGroup(outs []model.Tensor, x model.Tensor, segs [][]model.LoRASeg) bool {
	if len(outs) != len(segs) {
		panic(fmt.Sprintf("cuda: LoRAGroup of %d outputs with %d segment lists", len(outs), len(segs)))
	}
	if !b.loraGroup || len(outs) > loraGroupMax {
		return false
	}
	maxRows, maxRank, tmp, total := 0, 0, 0, 0
	for g, out := range outs {
		r, k, n := checkSegs(out, x, segs[g])
		maxRows, maxRank, tmp, total = max(maxRows, r), max(maxRank, k), tmp+n, total+len(segs[g])
	}
	splits, stride := b.loraWideLayout(x.Cols, total, maxRows, maxRank)
	if total == 0 || b.failed() || !b.reserveSegs(total, max(tmp, splits*stride)) {
		return true
	}
	a := &b.groupArgs // in the backend, not on the stack: the cgo call would move them to the heap every call
	at, toff := b.segUsed, 0
	for g, out := range outs {
		toff = b.putSegs(at, segs[g], toff)
		at += len(segs[g])
		a.outs[g], a.dims[g], a.ends[g] = ptr(out), C.uintptr_t(out.Cols), C.uintptr_t(at-b.segUsed)
	}
	table, ok := b.commitSegs(total)
	if !ok {
		return true
	}
	if splits > 0 {
		b.ok("lora group wide", C.s_lora_group_wide(&a.outs[0], &a.dims[0], &a.ends[0], C.int(len(outs)), ptr(x), table, C.int(total), C.int(maxRows),
			C.int(maxRank), C.uintptr_t(b.loraTmp), C.int(x.Cols), C.int(splits), C.int(stride), b.work()))
		return true
	}
	b.ok("lora group", C.s_lora_group(&a.outs[0], &a.dims[0], &a.ends[0], C.int(len(outs)), ptr(x), table, C.int(total), C.int(maxRows), C.int(maxRank),
		C.uintptr_t(b.loraTmp), C.int(x.Cols), b.work()))
	return true
}

// SetLoRAWide turns the wide LoRA kernels (kernels/lora.cu) on or off for the following steps:
// LoRA and LoRAGroup launch them instead of the plain ones (RouteLoRA has its own switch,
// SetRoutedWide; deterministic mode keeps the plain kernels, loraWideLayout). Recorded graphs hold
// the other kernels, so they are dropped.
func (b *Backend) SetLoRAWide(on bool) {
	setSwitch(b, &b.loraWide, on)
}

// loraWideSlice: input elements one wide shrink block takes per pass, 8 per thread of its 128:
// one 16-byte vector of each A row (bf16) and two of x (fp32).
const loraWideSlice = 1024

// loraWideLayout is the wide kernels' split of the input for a LoRA call of segs segments of
// at most maxRows rows and maxRank rank over inDim inputs, and the scratch stride between the
// splits' partial intermediates; splits 0 when the wide kernels are off. Both follow from what
// the step key holds (the segments' count, largest rows and rank; the projection's width), so
// a recorded graph's baked-in arguments hold for every step that replays it: the stride bounds
// the packed intermediates of any such call. The input splits into slices of about
// loraWideSlice elements, as many as keep the blocks (row bound x splits) within 1,024 (a
// decode batch of 64 rows at 4,096 inputs: 4 splits, 256 blocks; at 14,336: 14, 896 blocks),
// so the split scratch stays under 1,024 x maxRank floats. One split needs no stride: a call
// of more than 512 rows (a prefill chunk), which fills the GPU without splitting, reserves only
// its packed intermediates. Deterministic mode keeps the plain kernels: the split count follows
// the batch, so a row's last bits would too (deterministic.go), where the plain shrink and
// expand reduce each row alike in any batch.
func (b *Backend) loraWideLayout(inDim, segs, maxRows, maxRank int) (splits, stride int) {
	if !b.loraWide {
		return 0, 0
	}
	return b.wideLayout(inDim, segs, maxRows, maxRank)
}

// SetRoutedWide turns the wide routed LoRA (lp_lora_routed_wide) on or off for the following
// steps: RouteLoRA's shrink runs on the wide kernel's split-K (routedWideLayout). Recorded
// graphs hold the other kernels, so they are dropped.
func (b *Backend) SetRoutedWide(on bool) {
	setSwitch(b, &b.routedWide, on)
}

// SetRoutedFused turns the routing shrink (lp_route_lora_wide) on or off for the following
// steps: with the wide routed kernels on (SetRoutedWide), RouteLoRA's shrink blocks route their
// own rows, so a routed projection is two launches (routing shrink, expand) instead of three.
// Recorded graphs hold the other kernels, so they are dropped.
func (b *Backend) SetRoutedFused(on bool) {
	setSwitch(b, &b.routedFused, on)
}

// routedWideLayout is loraWideLayout's split for a routed call of rows rows and passes choices
// a row, each choice a one-row segment with its own maxRank floats of scratch (the route
// kernel's t_stride): splits 0 when the wide routed kernels are off. rows, passes and maxRank
// are what the step key fixes (its row count, the routing's top-k and expert table), so a
// recording's split and stride hold at every replay.
func (b *Backend) routedWideLayout(inDim, rows, passes, maxRank int) (splits, stride int) {
	if !b.routedWide {
		return 0, 0
	}
	return b.wideLayout(inDim, rows*passes, 1, maxRank)
}

// wideLayout is the split rule of loraWideLayout and routedWideLayout, whichever switch
// asked for the wide kernels.
func (b *Backend) wideLayout(inDim, segs, maxRows, maxRank int) (splits, stride int) {
	if b.batchInvariant || segs == 0 || maxRows == 0 {
		return 0, 0 // (no rows: the plain launcher refuses the call as before)
	}
	rows := segs * maxRows
	splits = min((inDim+loraWideSlice-1)/loraWideSlice, loraWideMaxSplits, 1024/rows)
	if splits <= 1 {
		return 1, 0
	}
	return splits, rows * maxRank
}
