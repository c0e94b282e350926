//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/loraplex/loraplex/model"
)

// Every op checks shapes in Go (a mismatch is a bug in the forward pass: panic, like the CPU
// backend) and skips its launch once the backend has failed.

func (b *Backend) Embed(out, table model.Tensor) {
	ids := b.step.Tokens
	if out.Rows != len(ids) || out.Cols != table.Cols || table.DType != model.BF16 {
		panic(fmt.Sprintf("cuda: Embed %d ids into %s from %s %s", len(ids), out.Shape(), table.Shape(), table.DType))
	}
	for _, id := range ids {
		if id < 0 || int(id) >= table.Rows {
			panic(fmt.Sprintf("cuda: Embed token id %d outside the vocabulary of %d", id, table.Rows))
		}
	}
	if !b.launch() {
		return
	}
	b.ok("embed", C.s_embed(ptr(out), ptr(table), b.meta(b.offTokens), C.int(len(ids)), C.int(table.Cols), C.int(table.Rows), b.work()))
}

// MatMul converts x to bf16 (tensor-core input) and runs cuBLAS with fp32 output.
func (b *Backend) MatMul(out, x, w model.Tensor) { b.gemm(out, x, w, 1, 0) }

func (b *Backend) gemm(out, x, w model.Tensor, alpha, beta float32) {
	if x.Cols != w.Cols || out.Rows != x.Rows || out.Cols != w.Rows || w.DType != model.BF16 || x.DType != model.F32 || out.DType != model.F32 {
		panic(fmt.Sprintf("cuda: MatMul out %s = x %s · wᵀ %s (%s)", out.Shape(), x.Shape(), w.Shape(), w.DType))
	}
	if !b.launch() || x.Rows == 0 {
		return
	}
	if b.batchInvariant {
		b.invariantGEMM(out, x, w, alpha, beta) // deterministic.go
		return
	}
	// Single-row products (batch-1 decode, one logits row) stream the weights with the GEMV
	// kernel (fp32 x, no conversion); from two rows up cuBLAS measured faster (bench/results).
	if x.Rows <= b.gemvRows && x.Cols%8 == 0 && uintptr(ptr(w))%16 == 0 && uintptr(ptr(x))%16 == 0 {
		b.ok("gemv", C.s_gemv(C.int(x.Rows), C.int(w.Rows), C.int(x.Cols), ptr(x), ptr(w), ptr(out), C.float(alpha), C.float(beta), b.gemvOpts(w), b.work()))
		return
	}
	if b.xToBF16(x) {
		b.productBF16(out, x, w, alpha, beta)
	}
}

// productBF16 runs out = alpha · x · wᵀ + beta · out from x as xToBF16 left it in b.xbf: on
// cuBLAS, or a product of at most LP_SKINNY_MAX_COLS outputs (a router's gate) at a decode batch
// on the skinny kernel (kernels/gemm_skinny.cu: one launch where cuBLAS takes a split-K kernel
// and its reduce) when LORAPLEX_GEMM_SKINNY is on.
func (b *Backend) productBF16(out, x, w model.Tensor, alpha, beta float32) {
	b.productOn(b.mainQueue(), out, x, w, alpha, beta)
}

// productOn is productBF16 issued on queue q (the stream or a lane of the forked products, fork.go).
func (b *Backend) productOn(q queue, out, x, w model.Tensor, alpha, beta float32) {
	if alpha == 1 && beta == 0 && b.skinnyTakes(x, w) {
		b.skinnyProducts++
		b.ok("gemm skinny", C.s_gemm_skinny(ptr(out), C.uintptr_t(b.xbf), ptr(w), C.int(x.Rows), C.int(w.Rows), C.int(x.Cols), q.stream))
		return
	}
	b.ok("gemm", C.s_gemm(q.blas, C.int(x.Rows), C.int(w.Rows), C.int(x.Cols), C.uintptr_t(b.xbf), ptr(w), ptr(out), C.float(alpha), C.float(beta)))
}

// skinnyTakes reports whether the skinny kernel computes x · wᵀ (a plain product, alpha 1 and
// beta 0): at most LP_SKINNY_MAX_COLS outputs at most LP_SKINNY_MAX_ROWS rows, aligned.
func (b *Backend) skinnyTakes(x, w model.Tensor) bool {
	return b.gemmSkinny && w.Rows <= int(C.LP_SKINNY_MAX_COLS) && x.Rows <= int(C.LP_SKINNY_MAX_ROWS) && x.Cols%8 == 0 &&
		uintptr(ptr(w))%16 == 0
}

// SetGemmSkinny turns the skinny kernel for products of few outputs (productBF16) on or off for
// the following steps. Recorded graphs hold the other kernel, so they are dropped.
func (b *Backend) SetGemmSkinny(on bool) { setSwitch(b, &b.gemmSkinny, on) }

// SkinnyProducts is the number of products the skinny kernel has taken (for tests).
func (b *Backend) SkinnyProducts() int { return b.skinnyProducts }

// gateRun returns how many of the products ws (into outs) from the first on one strided-batched
// call takes when LORAPLEX_GATES_BATCHED is on: the longest run of products of one shape, at
// most LP_SKINNY_MAX_COLS outputs at most LP_SKINNY_MAX_ROWS rows, whose weights are views of
// one upload, each starting where the previous one ends (router.UploadGates lays a layer's
// gates out so; base weights are uploads of their own, so they never form a run), and whose
// outputs are views of one allocation, each the same distance past the previous one (the
// runner's gate logits); 1 where nothing is batched. A function of the step's rows and of
// addresses fixed while a router is loaded (recordings hold them anyway).
func (b *Backend) gateRun(outs, ws []model.Tensor) int {
	w0, o0 := ws[0], outs[0]
	if !b.gatesBatched || w0.Rows > int(C.LP_SKINNY_MAX_COLS) || o0.Rows > int(C.LP_SKINNY_MAX_ROWS) {
		return 1
	}
	run, wSize, step := 1, uintptr(2*w0.Rows*w0.Cols), uintptr(0)
	for j := 1; j < len(ws); j++ {
		w, o := ws[j], outs[j]
		prev, at := uintptr(ptr(outs[j-1])), uintptr(ptr(o))
		if w.Rows != w0.Rows || w.Cols != w0.Cols || o.Rows != o0.Rows || w.Buf != w0.Buf || o.Buf != o0.Buf ||
			uintptr(ptr(w)) != uintptr(ptr(ws[j-1]))+wSize ||
			at < prev+uintptr(4*o.Rows*o.Cols) || j > 1 && at-prev != step {
			break
		}
		run, step = run+1, at-prev
	}
	return run
}

// SetGatesBatched turns gateRun's strided-batched gate products on or off for the following
// steps; recorded graphs hold the other calls, so they are dropped.
func (b *Backend) SetGatesBatched(on bool) { setSwitch(b, &b.gatesBatched, on) }

// BatchedProducts is the number of products strided-batched calls have taken (for tests).
func (b *Backend) BatchedProducts() int { return b.batchedProducts }

// gatesBatchedDefault: off, measured slower. Written without a GPU from goals-2026-12-07-s27a
// call 2's Nsight view of a routed batch-64 step: each of a layer's seven gate products was
// cuBLAS's split-K tile kernel (~5.4 us, 8 blocks) and its reduce (~5.2 us), ~76 us a layer;
// batched, q/k/v's three and gate/up's two would be one such pair each. On an H100
// (goals-2026-12-08-s30a) TestGatesBatched and TestGatesBatchedRouted passed, but inside CUDA
// graphs (bench/gpu -only gates) cuBLAS's strided-batched call took 25 us for three gates at
// batch 64 against 17.6 us one at a time (0.70x; two gates 0.49x), and q/k/v with their gates
// 63.5 us against 54.4 (-only products).
const gatesBatchedDefault = false

// gemmSkinnyDefault: off, measured slower. In goals-2026-12-08-s28a (H100) TestGemmSkinny and
// TestGemmSkinnyParts passed, but routed top-2 of 28 at batch 64 decoded 4,587 tok/s with the
// gates on it against 5,071 on cuBLAS (0.90x; batch 1 never reaches it): its 56 blocks of a
// 64 x 28 gate (168 for q/k/v's three as parts) each walk a quarter of k with eight rows in
// flight, fewer loads in flight than cuBLAS's split-K tiles and its reduce keep. Written
// without a GPU from goals-2026-12-07-s27a call 2's Nsight view of a routed batch-64 step.
const gemmSkinnyDefault = false

// xToBF16 rounds x to bf16 into xbf (grown on demand), the tensor cores' input; false when
// that failed (the backend has recorded why).
func (b *Backend) xToBF16(x model.Tensor) bool {
	n := x.Rows * x.Cols
	if !b.reserve(&b.xbf, &b.xbfCap, n, 2) {
		return false
	}
	return b.ok("to bf16", C.s_f32_to_bf16(C.uintptr_t(b.xbf), ptr(x), C.size_t(n), b.work()))
}

// reserve makes *buf hold at least n elements of elem bytes (*capacity counts elements). A
// buffer too small is reallocated: outside graphs only (canGrow: a step being recorded is
// abandoned and rerun directly), after the stream drains, dropping every recording (they hold
// the old address). False when it could not (the backend has recorded why, or the step reruns).
// The one home of the device scratch buffers' growth: x in bf16, split-K partials, LoRA
// intermediates, deterministic mode's padded products, the expert-major routing's plan.
func (b *Backend) reserve(buf *uintptr, capacity *int, n, elem int) bool {
	if n <= *capacity {
		return true
	}
	if !b.canGrow() {
		return false
	}
	b.dropGraphs()
	if !b.ok("sync", C.s_stream_sync(b.work())) {
		return false
	}
	if *buf != 0 {
		C.s_free(C.uintptr_t(*buf))
		*buf, *capacity = 0, 0
	}
	p, err := b.malloc(elem * n)
	if err != nil {
		b.ok("malloc", 2)
		return false
	}
	*buf, *capacity = p, n
	return true
}

func (b *Backend) AddBias(x, bias model.Tensor) {
	if bias.Cols != x.Cols || bias.DType != model.F32 {
		panic(fmt.Sprintf("cuda: AddBias %s + %s", x.Shape(), bias.Shape()))
	}
	if !b.launch() || x.Rows == 0 {
		return
	}
	b.ok("bias", C.s_add_bias(ptr(x), ptr(bias), C.int(x.Rows), C.int(x.Cols), b.pdlLaunch(), b.work()))
}

func (b *Backend) RMSNorm(out, x, w model.Tensor, eps float32) {
	if out.Rows != x.Rows || out.Cols != x.Cols || w.Cols != x.Cols {
		panic(fmt.Sprintf("cuda: RMSNorm %s -> %s with %s", x.Shape(), out.Shape(), w.Shape()))
	}
	if !b.launch() || x.Rows == 0 {
		return
	}
	b.ok("rmsnorm", C.s_rmsnorm(ptr(out), ptr(x), ptr(w), C.int(x.Rows), C.int(x.Cols), C.float(eps), b.normOpts(), b.work()))
}

func (b *Backend) AddRMSNorm(x, delta, out, w model.Tensor, eps float32) {
	if delta.Rows != x.Rows || out.Rows != x.Rows || delta.Cols != x.Cols || out.Cols != x.Cols || w.Cols != x.Cols {
		panic(fmt.Sprintf("cuda: AddRMSNorm %s + %s -> %s with %s", x.Shape(), delta.Shape(), out.Shape(), w.Shape()))
	}
	if !b.launch() || x.Rows == 0 {
		return
	}
	b.ok("add_rmsnorm", C.s_add_rmsnorm(ptr(x), ptr(delta), ptr(out), ptr(w), C.int(x.Rows), C.int(x.Cols), C.float(eps), b.normOpts(), b.work()))
}

func (b *Backend) RoPE(x model.Tensor, heads int, table model.Tensor) {
	if x.Rows != len(b.step.Positions)*heads || table.Cols != x.Cols || x.Cols%2 != 0 || x.Cols > maxHeadDim {
		panic(fmt.Sprintf("cuda: RoPE %s with %d heads, %d positions, table %s", x.Shape(), heads, len(b.step.Positions), table.Shape()))
	}
	for _, p := range b.step.Positions {
		if int(p) >= table.Rows {
			panic(fmt.Sprintf("cuda: RoPE position %d beyond the table's %d", p, table.Rows))
		}
	}
	if !b.launch() || x.Rows == 0 {
		return
	}
	b.ok("rope", C.s_rope(ptr(x), b.meta(b.offPos), ptr(table), C.int(x.Rows), C.int(heads), C.int(x.Cols), b.work()))
}

func (b *Backend) StoreKV(layer int, k, v model.Tensor) {
	width := b.kv.KVHeads * b.kv.HeadDim
	n := len(b.step.Slots)
	if k.Cols != width || v.Cols != width || k.Rows != n || v.Rows != n || layer < 0 || layer >= len(b.kcache) {
		panic(fmt.Sprintf("cuda: StoreKV layer %d k %s v %s into width %d for %d slots", layer, k.Shape(), v.Shape(), width, n))
	}
	if !b.launch() || n == 0 {
		return
	}
	b.ok("store_kv", C.s_store_kv(C.uintptr_t(b.kcache[layer]), C.uintptr_t(b.vcache[layer]), ptr(k), ptr(v), b.meta(b.offSlots), C.int(n), C.int(width), b.work()))
}

func (b *Backend) Attention(out, q model.Tensor, layer int, p model.AttnParams) {
	n := len(b.step.Tokens)
	if q.Cols != p.Heads*p.HeadDim || out.Cols != q.Cols || q.Rows != n || out.Rows != n || p.HeadDim != b.kv.HeadDim ||
		p.KVHeads != b.kv.KVHeads || p.Heads%p.KVHeads != 0 || layer < 0 || layer >= len(b.kcache) {
		panic(fmt.Sprintf("cuda: Attention q %s out %s heads %d/%d dim %d", q.Shape(), out.Shape(), p.Heads, p.KVHeads, p.HeadDim))
	}
	if !b.launch() || n == 0 {
		return
	}
	kc, vc := C.uintptr_t(b.kcache[layer]), C.uintptr_t(b.vcache[layer])
	if b.numTiles > 0 {
		// Prepare cut the prefill tiles for the kernel that runs them (tileRows).
		pos, tiles, nt, sp, pt := b.meta(b.offPos), b.meta(b.offTiles), C.int(b.numTiles), b.meta(b.offSeqPages), b.meta(b.offPages)
		h, kvh, d, ps, w, sc := C.int(p.Heads), C.int(p.KVHeads), C.int(p.HeadDim), C.int(b.kv.PageSize), C.int(p.Window), C.float(p.Scale)
		var code C.int
		if b.tileRows != prefillTile {
			splits := b.prefillSplitCount(p)
			if splits > 1 {
				need := int(C.lp_attention_scratch_floats(C.int(b.numTiles*b.tileRows), h, d, C.int(splits)))
				if !b.reserve(&b.attnScratch, &b.attnCap, need, 4) {
					return
				}
			}
			code = C.s_attention_prefill_mma(ptr(out), ptr(q), kc, vc, pos, tiles, nt, C.int(b.tileRows), sp, pt, h, kvh, d, ps, w, sc,
				C.int(splits), C.uintptr_t(b.attnScratch), b.work())
		} else {
			code = C.s_attention_prefill(ptr(out), ptr(q), kc, vc, pos, tiles, nt, sp, pt, h, kvh, d, ps, w, sc, b.work())
		}
		if !b.ok("attention (prefill)", code) {
			return
		}
	}
	if b.numRows > 0 {
		grouped := b.grouped(p.Heads, p.KVHeads, p.HeadDim)
		splits, chunk := b.decodeSplits(b.numRows, p.Heads, p.KVHeads, grouped)
		need := int(C.lp_attention_scratch_floats(C.int(b.numRows), C.int(p.Heads), C.int(p.HeadDim), C.int(splits)))
		if !b.reserve(&b.attnScratch, &b.attnCap, need, 4) {
			return
		}
		b.ok("attention", C.s_attention(ptr(out), ptr(q), kc, vc, b.meta(b.offPos), b.meta(b.offRows), b.meta(b.offRowSeq), b.meta(b.offSeqPages), b.meta(b.offPages),
			C.int(b.numRows), C.int(p.Heads), C.int(p.KVHeads), C.int(p.HeadDim), C.int(b.kv.PageSize), C.int(p.Window), C.float(p.Scale),
			C.int(splits), C.int(chunk), b.attentionKernel(grouped), C.uintptr_t(b.attnScratch), b.pdlLaunch(), b.work()))
	}
}

func (b *Backend) SiluMul(out, gate, up model.Tensor) {
	if out.Rows != gate.Rows || out.Rows != up.Rows || out.Cols != gate.Cols || out.Cols != up.Cols {
		panic(fmt.Sprintf("cuda: SiluMul %s %s %s", out.Shape(), gate.Shape(), up.Shape()))
	}
	if !b.launch() || out.Rows == 0 {
		return
	}
	b.ok("silu_mul", C.s_silu_mul(ptr(out), ptr(gate), ptr(up), C.size_t(out.Rows*out.Cols), b.work()))
}

func (b *Backend) GatherRows(out, x model.Tensor) {
	rows := b.step.LogitRows
	if out.Rows != len(rows) || out.Cols != x.Cols {
		panic(fmt.Sprintf("cuda: GatherRows %d rows of %s into %s", len(rows), x.Shape(), out.Shape()))
	}
	if !b.launch() || len(rows) == 0 {
		return
	}
	b.ok("gather", C.s_gather(ptr(out), ptr(x), b.meta(b.offLogit), C.int(len(rows)), C.int(x.Cols), b.pdlLaunch(), b.work()))
}

// LoRA writes the segment table into a pinned ring (reset every step; the stream is idle at
// Prepare), copies it to the device in one transfer and launches shrink + expand for all
// segments together.
func (b *Backend) LoRA(out, x model.Tensor, segs []model.LoRASeg) {
	b.LoRAPhases(out, x, segs, LoRAShrink|LoRAExpand)
}

// LoRAPhase names the launches of a LoRA call, so that a benchmark can time them apart
// (bench/gpu -only breakdown).
type LoRAPhase int

const (
	LoRAShrink LoRAPhase = C.LP_LORA_SHRINK // t = A x into the scratch
	LoRAExpand LoRAPhase = C.LP_LORA_EXPAND // out += scale · B t from the scratch the last shrink of the same segments wrote
)

// LoRAPhases is LoRA with only the launches phases names.
func (b *Backend) LoRAPhases(out, x model.Tensor, segs []model.LoRASeg, phases LoRAPhase) {
	if len(segs) == 0 {
		return
	}
	maxRows, maxRank, tmp := checkSegs(out, x, segs)
	splits, stride := b.loraWideLayout(x.Cols, len(segs), maxRows, maxRank)
	if b.failed() || !b.reserveSegs(len(segs), max(tmp, splits*stride)) {
		return
	}
	b.putSegs(b.segUsed, segs, 0)
	table, ok := b.commitSegs(len(segs))
	if !ok {
		return
	}
	if splits > 0 {
		b.ok("lora wide", C.s_lora_wide(ptr(out), ptr(x), table, C.int(len(segs)), C.int(maxRows), C.int(maxRank),
			C.uintptr_t(b.loraTmp), C.int(x.Cols), C.int(out.Cols), C.int(splits), C.int(stride), C.int(phases), b.work()))
		return
	}
	b.ok("lora", C.s_lora(ptr(out), ptr(x), table, C.int(len(segs)), C.int(maxRows), C.int(maxRank),
		C.uintptr_t(b.loraTmp), C.int(x.Cols), C.int(out.Cols), C.int(phases), b.work()))
}

// checkSegs panics on a segment that does not fit x and out (a bug in the forward pass) and
// returns the segments' largest row count and rank and the scratch floats their
// intermediates take.
func checkSegs(out, x model.Tensor, segs []model.LoRASeg) (maxRows, maxRank, tmp int) {
	for _, sg := range segs {
		if sg.A.Cols != x.Cols || sg.B.Rows != out.Cols || sg.A.Rows != sg.B.Cols || sg.Start < 0 || sg.Start+sg.N > x.Rows ||
			sg.A.DType != model.BF16 || sg.B.DType != model.BF16 || sg.A.Rows > maxLoRARank || sg.Start+sg.N > out.Rows {
			panic(fmt.Sprintf("cuda: LoRA x %s out %s A %s B %s rows [%d,+%d)", x.Shape(), out.Shape(), sg.A.Shape(), sg.B.Shape(), sg.Start, sg.N))
		}
		maxRows, maxRank = max(maxRows, sg.N), max(maxRank, sg.A.Rows)
		tmp += sg.N * sg.A.Rows
	}
	return maxRows, maxRank, tmp
}

// reserveSegs makes room for n more segments in the ring and tmp scratch floats; false when
// the step cannot go on (a failure, or growth refused while recording: the step reruns).
func (b *Backend) reserveSegs(n, tmp int) bool {
	// While replaying, the segment table is still written: the graph copies it from here.
	if b.segUsed+n > b.segCap && (!b.canGrow() || !b.growSegs(b.segUsed+n)) {
		return false
	}
	return b.reserve(&b.loraTmp, &b.loraCap, tmp, 4)
}

// putSegs writes segs into the pinned ring from index at, their intermediates at scratch
// offsets from toff on, and returns the offset after the last. It writes the ring as Go values,
// not through a cgo call per segment: a batch-64 step on 64 adapters puts 64 segments for each
// of 7 projections in each of 32 layers, 14,336 calls at ~50 ns, and the runner builds a step
// (replayed graphs included) only once the last one completed, so that time added to the step.
func (b *Backend) putSegs(at int, segs []model.LoRASeg, toff int) int {
	b.segsPut += len(segs)
	ring := unsafe.Slice((*C.lp_lora_seg)(b.segHost), b.segCap)[at : at+len(segs)]
	for i, sg := range segs {
		r := &ring[i]
		// a and b are device addresses, not Go pointers: stored as the integers they are.
		*(*C.uintptr_t)(unsafe.Pointer(&r.a)), *(*C.uintptr_t)(unsafe.Pointer(&r.b)) = ptr(sg.A), ptr(sg.B)
		r.start, r.n, r.rank, r.t_off, r.scale = C.int(sg.Start), C.int(sg.N), C.int(sg.A.Rows), C.int(toff), C.float(sg.Scale)
		toff += sg.N * sg.A.Rows
	}
	return toff
}

// commitSegs takes the n segments put at segUsed and returns the table's device address, and
// whether to launch: not while replaying (the graph holds the launches; EndStep copies the
// staged tables).
func (b *Backend) commitSegs(n int) (C.uintptr_t, bool) {
	byteOff := uintptr(b.segUsed * b.segSize)
	b.segUsed += n
	if b.mode == modeReplay {
		return 0, false
	}
	b.devSegs = segTable{} // this call writes segDev (ops run outside a step too, in tests)
	// Direct steps copy each table before its launch; recorded steps copy the whole ring once
	// in EndStep, before the graph runs, instead of carrying one copy node per call.
	if b.mode == modeDirect && !b.ok("lora segments", C.s_htod(C.uintptr_t(b.segDev+byteOff), unsafe.Add(b.segHost, byteOff), C.size_t(n*b.segSize), b.work())) {
		return 0, false
	}
	return C.uintptr_t(b.segDev + byteOff), true
}

func (b *Backend) growSegs(need int) bool {
	b.dropGraphs()
	if !b.ok("sync", C.s_stream_sync(b.work())) {
		return false
	}
	need = max(need*2, 1024)
	if b.segHost != nil {
		C.lp_free_host(b.segHost)
		C.s_free(C.uintptr_t(b.segDev))
	}
	var hp unsafe.Pointer
	if !b.ok("pinned alloc", C.lp_malloc_host(&hp, C.size_t(need*b.segSize))) {
		return false
	}
	d, err := b.malloc(need * b.segSize)
	if err != nil {
		b.ok("malloc", 2)
		return false
	}
	b.segHost, b.segDev, b.segCap = hp, d, need
	b.segUsed = 0 // earlier segments of this step were already consumed (we synchronised)
	return true
}

// SetGEMVRows sets how many rows a product may have to use the GEMV kernel instead of cuBLAS
// (1..8; for benchmarks that choose the crossover).
func (b *Backend) SetGEMVRows(n int) { b.gemvRows = min(max(n, 0), int(C.LP_GEMV_MAX_ROWS)) }
