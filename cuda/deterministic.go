//go:build cuda

package cuda

import "github.com/loraplex/loraplex/model"

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
//     kernel in fp32 (gemv.cu). In the mode every product, logits head included, runs
//     lp_gemv_rows_bf16: tiles of LP_GEMV_MAX_ROWS rows, each row reduced over k with the
//     same lane split and warp reduction whatever the tile, the batch or the row's place.
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
// The price is throughput at larger batches (weights are read once per 8 rows, prompts skip
// the tiled attention); BenchmarkDeterministicDecodeCUDA measures it.

var _ model.BatchInvariant = (*Backend)(nil)

// SetBatchInvariant implements model.BatchInvariant. Steps recorded before the switch used
// the other kernels, so their graphs are dropped.
func (b *Backend) SetBatchInvariant(on bool) {
	if on != b.batchInvariant {
		b.dropGraphs()
	}
	b.batchInvariant = on
}
