//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"fmt"
	"os"

	"github.com/loraplex/loraplex/model"
)

// Deterministic mode (serve.Options.Deterministic, --deterministic): every row of a step is
// computed by the same instructions, in the same order, whatever the rest of the step holds,
// so a request's logits, tokens and logprobs are bitwise the same alone or in any batch. This
// is vLLM's batch-invariant mode and the recipe of Thinking Machines' "Defeating
// Nondeterminism in LLM Inference": run-to-run nondeterminism is not the problem (no kernel
// here uses atomics on floats; lora.cu explains why the routed LoRA avoids them), batch
// dependence is: a kernel whose reduction strategy follows the batch's shape gives a row
// different last bits in different batches. What varies with the batch by default, and what
// the mode does instead:
//
//   - Products (MatMul): cuBLAS picks its algorithm (tile shape, split-K) per shape, so per
//     batch size, and the input goes to it as bf16, while one-row products take the GEMV
//     kernel in fp32 (gemv.cu). In the mode every product, logits head included, runs one
//     kernel chosen by the shape alone. LORAPLEX_DETERMINISTIC_GEMM (read once in New) or
//     SetDeterministicGEMM picks which (DeterministicGEMM):
//       rows: lp_gemv_rows_bf16 on the CUDA
//         cores, fp32 x, tiles of LP_GEMV_MAX_ROWS rows, each row reduced over k with the
//         same lane split and warp reduction whatever the tile, the batch or the row's place;
//         weights are read once per 8 rows.
//       tensor-cores, tensor-cores-bf16x: lp_gemm_invariant_bf16 (kernels/gemm_invariant.cu),
//         mma.sync with x rounded to bf16 as on the default path (in the kernel, or once per
//         product into a bf16 copy: bitwise the same), each output accumulated by the same
//         mma sequence in k order whatever the batch, weights read once per 64 rows; shapes
//         it does not take (k % 16 != 0, unaligned buffers: invariantMMAShape) use the rows
//         kernel, a choice the row count never enters. MatMulShared runs the products of one
//         input (q/k/v, gate/up) in one launch of the same kernel (invariantShared), and the
//         fused GEMV-and-SwiGLU (GateUpSiLU, gemv.cu's arithmetic) steps aside, so a single
//         row takes the same arithmetic as a batch. LORAPLEX_DETERMINISTIC_SMALL=on (or
//         SetDeterministicSmall) sends products of up to 8 rows to the kernel's small-n
//         variant, chosen by the row count but bitwise the same (the same mma sequence per
//         output, in blocks shaped to stream the weights at batch 1); and
//         LORAPLEX_DETERMINISTIC_WIDE=on|deep (or SetDeterministicWide) sends those of more
//         rows to its wide or deep variant (DeterministicWide), bitwise the same again.
//       cublas-padded (the default, deterministicGEMMDefault): cuBLAS itself on a shape that never changes (paddedGEMM,
//         kernels/gemm.cu's lp_gemm_padded_bf16): x in chunks of 64 rows, each chunk rounded
//         to bf16 into one buffer and run as the same 64-row cublasGemmEx into one scratch,
//         its real rows then copied out (a whole chunk is written to an aligned output
//         directly, the same call but for an address of the same alignment). The kernel cuBLAS picks is the default path's at batch
//         64, so batch-64 decode costs what it costs by default and batch 1 pays for 64 rows;
//         MatMulShared is that per part, and the fused GEMVs step aside as above.
//   - Decode attention (attention.cu) splits each row's positions into fewer split-K chunks
//     when the batch is big; the mode takes the context rule instead (attention.go
//     decodeSplits): a row splits by its own visible positions (chunks of at least
//     LP_DECODE_SPLIT_CHUNK, at most the backend's fixed depth of them), so the chunk boundaries and
//     the merge depend on the row's position alone, as the post's fixed split *size* does.
//     (Before goals-2026-12-07-final3 it fixed the count at LP_DECODE_SPLITS with no chunk
//     floor, also invariant, but a batch of 64 short rows then ran eight blocks of a few keys
//     per row and head, and a merge, where the default runs one.)
//   - Prefill attention computes rows in tiles of a chunk (attention_prefill*.cu), and how a
//     prompt is chunked depends on the token budget the other requests leave, and a one-row
//     chunk goes to the decode kernel instead. In the mode every row, prefill or decode, takes
//     the per-row decode kernel (fixed splits), which reads the cache the step has already
//     written, so a prompt row's attention no longer depends on its chunk (nor on the
//     tensor-core prefill's split count, LORAPLEX_PREFILL_SPLIT, which follows the step's tile
//     count: the mode never reaches that kernel).
//
// Already per row and left as they are: RMSNorm (one block of fixed size per row), RoPE,
// SwiGLU, embedding, bias, the KV store, LoRA (shrink and expand reduce each row on its own,
// the routed expand in a fixed order; the wide kernels of LORAPLEX_LORA_WIDE, whose split of
// the input follows the batch, step aside in the mode), the router's top-k and sampling (one
// block per row).
// The price is throughput at larger batches (weights are read once per 8 or 64 rows, prompts
// skip the tiled attention); BenchmarkDeterministicDecodeCUDA and bench/gpu's deterministic
// rows measure it.

var _ model.BatchInvariant = (*Backend)(nil)

// SetBatchInvariant implements model.BatchInvariant. Steps recorded before the switch used
// the other kernels, so their graphs are dropped.
func (b *Backend) SetBatchInvariant(on bool) {
	setSwitch(b, &b.batchInvariant, on)
}

// DeterministicGEMM is deterministic mode's product kernel: LORAPLEX_DETERMINISTIC_GEMM=
// rows|tensor-cores|tensor-cores-bf16x (read once in New), or Backend.SetDeterministicGEMM.
type DeterministicGEMM int

const (
	// DeterministicGEMMRows: lp_gemv_rows_bf16 on the CUDA cores, fp32 x, weights read once
	// per 8 rows.
	DeterministicGEMMRows DeterministicGEMM = iota
	// DeterministicGEMMTensorCores: lp_gemm_invariant_bf16 reading x in fp32 and rounding it
	// to bf16 in the kernel, weights read once per 64 rows.
	DeterministicGEMMTensorCores
	// DeterministicGEMMTensorCoresBF16X: the same kernel on a bf16 copy of x made once per
	// product (lp_f32_to_bf16, the default path's): bitwise the same results, half the bytes
	// of x each block reads from L2, one launch more per product.
	DeterministicGEMMTensorCoresBF16X
	// DeterministicGEMMPadded: cuBLAS on a fixed shape, every product in chunks of padRows
	// rows, each chunk one cublasGemmEx of exactly padRows rows (lp_gemm_padded_bf16,
	// kernels/gemm.cu): the default path's kernel at batch 64, weights read once per 64 rows.
	DeterministicGEMMPadded
)

func (d DeterministicGEMM) String() string {
	switch d {
	case DeterministicGEMMRows:
		return "rows"
	case DeterministicGEMMTensorCores:
		return "tensor-cores"
	case DeterministicGEMMTensorCoresBF16X:
		return "tensor-cores-bf16x"
	case DeterministicGEMMPadded:
		return "cublas-padded"
	}
	return fmt.Sprintf("DeterministicGEMM(%d)", int(d))
}

// deterministicGEMMDefault: deterministic mode's products unless LORAPLEX_DETERMINISTIC_GEMM
// or SetDeterministicGEMM says otherwise. cuBLAS on a fixed 64-row shape: on an H100
// (bench/results/gpu-h100/goals-2026-12-07-final3, whole chunks written straight to the output)
// deterministic decode ran at 0.977 of the default mode at batch 64 and 0.806 at batch 1, the
// tensor-core kernel with x in bf16 at 0.40 and 0.64 in the same run (its A/B row); the 64-row
// product costs batch 1 less than the tensor-core kernel's small variant did. Before that the
// tensor-core kernel (3,008 tok/s at batch 64 against 456 on the rows kernel,
// goals-2026-12-07-ab). One kernel has to serve every row count, or a row's bits would follow
// its batch; the bitwise tests (TestBatchInvariantMatMul, TestInvariantMatMulShared,
// TestDeterministicModeIsBatchInvariantOnCUDA) hold every setting to that.
const deterministicGEMMDefault = DeterministicGEMMPadded

// deterministicGEMMFromEnv reads LORAPLEX_DETERMINISTIC_GEMM (the default when unset or unknown).
func deterministicGEMMFromEnv() DeterministicGEMM {
	for _, d := range []DeterministicGEMM{DeterministicGEMMRows, DeterministicGEMMTensorCores, DeterministicGEMMTensorCoresBF16X, DeterministicGEMMPadded} {
		if os.Getenv("LORAPLEX_DETERMINISTIC_GEMM") == d.String() {
			return d
		}
	}
	return deterministicGEMMDefault
}

// SetDeterministicGEMM chooses deterministic mode's product kernel for the following steps
// (for tests and benchmarks that compare them). Recorded graphs hold the other kernel's
// launches, so they are dropped.
func (b *Backend) SetDeterministicGEMM(d DeterministicGEMM) {
	if d < DeterministicGEMMRows || d > DeterministicGEMMPadded {
		panic(fmt.Sprintf("cuda: SetDeterministicGEMM(%d)", int(d)))
	}
	setSwitch(b, &b.detGEMM, d)
}

// deterministicSmallDefault: whether the tensor-core kernel sends products of at most
// LP_GEMM_INVARIANT_SMALL_ROWS rows (decode at batch 1 to 8) to its small-n variant unless
// LORAPLEX_DETERMINISTIC_SMALL=on|off (read once in New) or SetDeterministicSmall says otherwise.
// On: the one-variant kernel streamed batch-1 weights at about 1.06 TB/s on an H100 (70.7 tok/s,
// 128 blocks of 32 columns at m = 4,096 with three 4-KB stages of W ahead each); the small
// variant (256 one-warp blocks of 16 columns there, seven 4-KB stages ahead each,
// kernels/gemm_invariant.cu) gave 100.8 tok/s in the same run (1.43x; batch 64 unchanged), and
// its products are bitwise the big variant's (TestGemmInvariant, TestBatchInvariantMatMul,
// TestInvariantMatMulShared passed on the H100; bench/results/gpu-h100/goals-2026-12-07-ab2).
const deterministicSmallDefault = true

// SetDeterministicSmall chooses whether deterministic mode's tensor-core products of at most
// LP_GEMM_INVARIANT_SMALL_ROWS rows take the small-n variant for the following steps (for tests
// and benchmarks that compare both): bitwise the same products either way, since the variant
// runs each output's mma sequence unchanged. Recorded graphs hold the other variant's launches,
// so they are dropped.
func (b *Backend) SetDeterministicSmall(on bool) {
	setSwitch(b, &b.detSmall, on)
}

// DeterministicWide is the tensor-core kernel's variant for products of more than
// LP_GEMM_INVARIANT_SMALL_ROWS rows (decode at batch 9 to 64, prefill): LORAPLEX_DETERMINISTIC_WIDE=
// off|on|deep (read once in New), or Backend.SetDeterministicWide. Every variant runs each
// output's mma sequence unchanged (kernels/gemm_invariant.cu), so the products are bitwise the
// same whichever runs; they differ in how the weights are streamed (BenchmarkGemmInvariantVariants
// measures each one's rate, bench/gpu's A/B rows its effect on decode).
type DeterministicWide int

const (
	// DeterministicWideOff: the big variant (strips of 32 columns, 64 rows, three 4-KB stages of
	// W ahead per block).
	DeterministicWideOff DeterministicWide = iota
	// DeterministicWideOn: the wide variant: strips of 64 columns (half the L2 reads of x per
	// byte of W), eleven stages ahead with bf16 x, one block per SM.
	DeterministicWideOn
	// DeterministicWideDeep: the deep variant: the big variant's blocks, seven stages ahead
	// sized for x's type (two blocks per SM with bf16 x).
	DeterministicWideDeep
)

func (d DeterministicWide) String() string {
	switch d {
	case DeterministicWideOff:
		return "off"
	case DeterministicWideOn:
		return "on"
	case DeterministicWideDeep:
		return "deep"
	}
	return fmt.Sprintf("DeterministicWide(%d)", int(d))
}

// deterministicWideDefault: off until a GPU run measures the others. At batch 64 the big variant
// streamed about 0.8 TB/s of weights on an H100 (3,219 tok/s, 0.428 of the default mode's
// 7,517; bench/results/gpu-h100/goals-2026-12-07-ab2), and fp32 x (twice the L2 reads of x)
// ran at 0.77 of bf16 x's rate (2,322 and 3,008 tok/s in goals-2026-12-07-ab): by an estimate
// from the step time, about 3 TB/s of L2 reads, weights and x together, in both, so the reads
// of x each block repeats may be the bound; the wide variant halves them per byte of W.
const deterministicWideDefault = DeterministicWideOff

// deterministicWideFromEnv reads LORAPLEX_DETERMINISTIC_WIDE (the default when unset or unknown).
func deterministicWideFromEnv() DeterministicWide {
	for _, d := range []DeterministicWide{DeterministicWideOff, DeterministicWideOn, DeterministicWideDeep} {
		if os.Getenv("LORAPLEX_DETERMINISTIC_WIDE") == d.String() {
			return d
		}
	}
	return deterministicWideDefault
}

// SetDeterministicWide chooses the tensor-core kernel's variant for deterministic products of
// more than LP_GEMM_INVARIANT_SMALL_ROWS rows for the following steps (for tests and benchmarks
// that compare them): bitwise the same products whichever runs. Recorded graphs hold the other
// variant's launches, so they are dropped.
func (b *Backend) SetDeterministicWide(d DeterministicWide) {
	if d < DeterministicWideOff || d > DeterministicWideDeep {
		panic(fmt.Sprintf("cuda: SetDeterministicWide(%d)", int(d)))
	}
	setSwitch(b, &b.detWide, d)
}

// detVariants is SetDeterministicSmall's and SetDeterministicWide's choices as the kernel's
// variants flags.
func (b *Backend) detVariants() C.int {
	var v C.int
	if b.detSmall {
		v |= C.LP_GEMM_INVARIANT_SMALL
	}
	switch b.detWide {
	case DeterministicWideOn:
		v |= C.LP_GEMM_INVARIANT_WIDE
	case DeterministicWideDeep:
		v |= C.LP_GEMM_INVARIANT_DEEP
	}
	return v
}

// invariantGEMM is MatMul in deterministic mode: one kernel per shape, whatever the row count.
func (b *Backend) invariantGEMM(out, x, w model.Tensor, alpha, beta float32) {
	if b.detGEMM == DeterministicGEMMPadded {
		b.paddedGEMM([]model.Tensor{out}, x, []model.Tensor{w}, alpha, beta)
		return
	}
	if b.detGEMM == DeterministicGEMMRows || !invariantMMAShape(x, w) {
		b.ok("gemv rows", C.s_gemv_rows(C.int(x.Rows), C.int(w.Rows), C.int(x.Cols), ptr(x), ptr(w), ptr(out), C.float(alpha), C.float(beta), b.work()))
		return
	}
	if xp, bf, ok := b.invariantInput(x); ok {
		b.ok("gemm invariant", C.s_gemm_invariant(C.int(x.Rows), C.int(w.Rows), C.int(x.Cols), xp, bf, ptr(w), ptr(out), C.float(alpha), C.float(beta), b.detVariants(), b.work()))
	}
}

// invariantInput is x as the tensor-core kernel reads it: x itself (fp32, bf = 0), or its bf16
// copy in xbf (bf = 1) under DeterministicGEMMTensorCoresBF16X; false when the copy failed.
func (b *Backend) invariantInput(x model.Tensor) (p C.uintptr_t, bf C.int, ok bool) {
	if b.detGEMM != DeterministicGEMMTensorCoresBF16X {
		return ptr(x), 0, true
	}
	if !b.xToBF16(x) {
		return 0, 0, false
	}
	return C.uintptr_t(b.xbf), 1, true
}

// invariantMMAShape reports whether lp_gemm_invariant_bf16 takes out = x · wᵀ: k a multiple of
// 16, m within its grid, x and w 16-byte aligned (kernels/gemm_invariant.cu). The row count
// does not enter, and with k % 16 == 0 every row of an aligned buffer starts aligned, so a
// row alone and the same row in a batch take the same kernel. (xbf, the bf16 copy, is a
// device allocation: aligned.)
func invariantMMAShape(x, w model.Tensor) bool {
	return C.lp_gemm_invariant_ok(C.int(w.Rows), C.int(x.Cols)) != 0 && uintptr(ptr(x))%16 == 0 && uintptr(ptr(w))%16 == 0
}

// invariantProducts reports whether deterministic mode's products run on a kernel other than
// the rows kernel (the tensor cores' or the padded cuBLAS calls), whose arithmetic the fused
// decode GEMVs (gemv.cu) do not share: MatMulShared takes invariantShared then, and GateUpSiLU
// declines.
func (b *Backend) invariantProducts() bool {
	return b.batchInvariant && b.detGEMM != DeterministicGEMMRows
}

// invariantShared is MatMulShared in deterministic mode off the rows kernel, whatever the row
// count and the fusion switch: under DeterministicGEMMPadded each part's padded cuBLAS calls
// from one bf16 copy of each chunk (paddedGEMM); on the tensor cores the products of one input
// (q/k/v, gate/up) in one lp_gemm_invariant_parts_bf16 launch, each part bitwise what MatMul gives it (the same mma
// sequence per output; only the block that computes it differs), so k and v (32 strips each
// in the Llama-3-8B shape) share q's wave instead of leaving most SMs idle. It declines (false:
// MatMul per product) where any part's shape would take the rows kernel, a choice the row count
// never enters.
func (b *Backend) invariantShared(outs []model.Tensor, x model.Tensor, ws []model.Tensor) bool {
	if x.Rows == 0 || len(ws) > gemvPartsMax {
		return false
	}
	if b.detGEMM == DeterministicGEMMPadded {
		if b.launch() {
			b.paddedGEMM(outs, x, ws, 1, 0)
		}
		return true
	}
	strips := 0
	for _, w := range ws {
		if !invariantMMAShape(x, w) {
			return false
		}
		strips += (w.Rows + invariantCols - 1) / invariantCols
	}
	if strips > maxGridY {
		return false
	}
	if !b.launch() {
		return true
	}
	if xp, bf, ok := b.invariantInput(x); ok {
		a := b.gemvArgs.set(outs, ws)
		b.ok("gemm invariant parts", C.s_gemm_invariant_parts(C.int(x.Rows), C.int(x.Cols), xp, bf, &a.ws[0], &a.ys[0], &a.ends[0], C.int(len(ws)), b.detVariants(), b.work()))
	}
	return true
}

const (
	// invariantCols: output columns per block of lp_gemm_invariant_bf16, one grid row each.
	invariantCols = int(C.LP_GEMM_INVARIANT_COLS)
	// maxGridY: CUDA's limit on a grid's y dimension.
	maxGridY = 65535
)

// padRows: the row count of every cuBLAS call under DeterministicGEMMPadded.
const padRows = int(C.LP_GEMM_PAD_ROWS)

// paddedGEMM is outs[i] = alpha · x · ws[i]ᵀ + beta · outs[i] under DeterministicGEMMPadded:
// x in chunks of padRows rows, each chunk rounded to bf16 once into padX (what xToBF16 does on
// the default path, so the same rounding) and multiplied by every w as one cublasGemmEx of
// exactly padRows rows into padOut, whose chunk rows are then copied out, or straight into the
// output for a whole chunk there (lp_gemm_padded_bf16). The
// call is the same whatever the batch (shape and pointers), so a row's product is too
// (kernels/gemm.cu argues it); TestBatchInvariantMatMul holds cuBLAS to that bitwise.
func (b *Backend) paddedGEMM(outs []model.Tensor, x model.Tensor, ws []model.Tensor, alpha, beta float32) {
	maxM := 0
	for _, w := range ws {
		maxM = max(maxM, w.Rows)
	}
	if !b.reserve(&b.padX, &b.padXCap, padRows*x.Cols, 2) || !b.reserve(&b.padOut, &b.padOutCap, padRows*maxM, 4) {
		return
	}
	for r := 0; r < x.Rows; r += padRows {
		n := min(padRows, x.Rows-r)
		if !b.ok("to bf16", C.s_f32_to_bf16(C.uintptr_t(b.padX), ptr(x.Slice(r, n)), C.size_t(n*x.Cols), b.work())) {
			return
		}
		for i, w := range ws {
			q := b.mainQueue()
			if !b.ok("gemm padded", C.s_gemm_padded(q.blas, C.int(n), C.int(w.Rows), C.int(x.Cols), C.uintptr_t(b.padX), ptr(w), ptr(outs[i].Slice(r, n)), C.uintptr_t(b.padOut), C.float(alpha), C.float(beta), q.stream)) {
				return
			}
		}
	}
}
