//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
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
//     SetDeterministicGEMM picks which:
//       rows (the default until a GPU run has compared both): lp_gemv_rows_bf16 on the CUDA
//         cores, fp32 x, tiles of LP_GEMV_MAX_ROWS rows, each row reduced over k with the
//         same lane split and warp reduction whatever the tile, the batch or the row's place;
//         weights are read once per 8 rows.
//       tensor-cores: lp_gemm_invariant_bf16 (kernels/gemm_invariant.cu), mma.sync with x
//         rounded to bf16 as on the default path, each output accumulated by the same mma
//         sequence in k order whatever the batch, weights read once per 64 rows; shapes it
//         does not take (k % 16 != 0, unaligned buffers: invariantMMAShape) use the rows
//         kernel, a choice the row count never enters. MatMulShared runs the products of one
//         input (q/k/v, gate/up) in one launch of the same kernel (invariantShared), and the
//         fused GEMV-and-SwiGLU (GateUpSiLU, gemv.cu's arithmetic) steps aside, so a single
//         row takes the same arithmetic as a batch.
//   - Decode attention (attention.cu) splits each row's positions into fewer split-K chunks
//     when the batch is big; the mode fixes the count at LP_DECODE_SPLITS, so the chunk
//     boundaries and the merge depend on the row's position alone. (The post asks for a fixed
//     split *size* because its kernels split the key range a whole prefill chunk shares, whose
//     length depends on the chunk; this kernel splits each row's own visible positions, a
//     function of the row's position, so a fixed count is already invariant.)
//   - Prefill attention computes rows in tiles of a chunk (attention_prefill*.cu), and how a
//     prompt is chunked depends on the token budget the other requests leave, and a one-row
//     chunk goes to the decode kernel instead. In the mode every row, prefill or decode, takes
//     the per-row decode kernel (fixed splits), which reads the cache the step has already
//     written, so a prompt row's attention no longer depends on its chunk.
//
// Already per row and left as they are: RMSNorm (one block of fixed size per row), RoPE,
// SwiGLU, embedding, bias, the KV store, LoRA (shrink and expand reduce each row on its own,
// the routed expand in a fixed order), the router's top-k and sampling (one block per row).
// The price is throughput at larger batches (weights are read once per 8 or 64 rows, prompts
// skip the tiled attention); BenchmarkDeterministicDecodeCUDA and bench/gpu's deterministic
// rows measure it.

var _ model.BatchInvariant = (*Backend)(nil)

// SetBatchInvariant implements model.BatchInvariant. Steps recorded before the switch used
// the other kernels, so their graphs are dropped.
func (b *Backend) SetBatchInvariant(on bool) {
	if on != b.batchInvariant {
		b.dropGraphs()
	}
	b.batchInvariant = on
}

// tensorCoreInvariantGEMMDefault: whether deterministic mode's products run on the tensor-core
// kernel unless LORAPLEX_DETERMINISTIC_GEMM (tensor-cores or rows) or SetDeterministicGEMM says
// otherwise. Off until its GPU tests (TestGemmInvariant, TestBatchInvariantMatMul,
// TestDeterministicModeIsBatchInvariantOnCUDA) have passed and bench/gpu has compared both.
const tensorCoreInvariantGEMMDefault = false

// deterministicGEMMFromEnv reads LORAPLEX_DETERMINISTIC_GEMM (the default when unset or unknown).
func deterministicGEMMFromEnv() bool {
	switch os.Getenv("LORAPLEX_DETERMINISTIC_GEMM") {
	case "tensor-cores":
		return true
	case "rows":
		return false
	}
	return tensorCoreInvariantGEMMDefault
}

// SetDeterministicGEMM chooses deterministic mode's product kernel for the following steps:
// true the tensor-core kernel where the shape allows it, false the CUDA-core rows kernel (for
// tests and benchmarks that compare the two). Recorded graphs hold the other kernel's launches,
// so they are dropped.
func (b *Backend) SetDeterministicGEMM(tensorCores bool) {
	if tensorCores != b.invariantMMA {
		b.dropGraphs()
	}
	b.invariantMMA = tensorCores
}

// invariantMMAShape reports whether lp_gemm_invariant_bf16 takes out = x · wᵀ: k a multiple of
// 16, m within its grid, x and w 16-byte aligned (kernels/gemm_invariant.cu). The row count
// does not enter, and with k % 16 == 0 every row of an aligned buffer starts aligned, so a
// row alone and the same row in a batch take the same kernel.
func invariantMMAShape(x, w model.Tensor) bool {
	return C.lp_gemm_invariant_ok(C.int(w.Rows), C.int(x.Cols)) != 0 && uintptr(ptr(x))%16 == 0 && uintptr(ptr(w))%16 == 0
}

// invariantProducts reports whether deterministic mode's products run on the tensor-core
// kernel, whose arithmetic the fused decode GEMVs (gemv.cu) do not share: MatMulShared takes
// invariantShared then, and GateUpSiLU declines.
func (b *Backend) invariantProducts() bool { return b.batchInvariant && b.invariantMMA }

// invariantShared is MatMulShared in deterministic mode on the tensor cores, whatever the row
// count and the fusion switch: the products of one input (q/k/v, gate/up) in one
// lp_gemm_invariant_parts_bf16 launch, each part bitwise what MatMul gives it (the same mma
// sequence per output; only the block that computes it differs), so k and v (32 strips each
// in the Llama-3-8B shape) share q's wave instead of leaving most SMs idle. It declines (false:
// MatMul per product) where any part's shape would take the rows kernel, a choice the row count
// never enters.
func (b *Backend) invariantShared(outs []model.Tensor, x model.Tensor, ws []model.Tensor) bool {
	if x.Rows == 0 || len(ws) > gemvPartsMax {
		return false
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
	a := b.gemvArgs.set(outs, ws)
	b.ok("gemm invariant parts", C.s_gemm_invariant_parts(C.int(x.Rows), C.int(x.Cols), ptr(x), &a.ws[0], &a.ys[0], &a.ends[0], C.int(len(ws)), b.stream))
	return true
}

const (
	// invariantCols: output columns per block of lp_gemm_invariant_bf16, one grid row each.
	invariantCols = int(C.LP_GEMM_INVARIANT_COLS)
	// maxGridY: CUDA's limit on a grid's y dimension.
	maxGridY = 65535
)
