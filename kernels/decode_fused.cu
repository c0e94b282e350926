// Decode's small per-layer ops fused (issue 15, item 2): a batch-1 step is a weight stream, and
// every launch between two weight products is time the stream stands still (4-7 µs each in
// bench/results/gpu-h200.md, about 1.2 ms of a 6.5 ms 8B step even inside a CUDA graph).
//
// Launches per decoder layer in a batch-1 step (Llama, no bias, no adapters, split-K attention):
//   before: add+RMSNorm 1, q/k/v GEMV 3, RoPE 2, KV store 1, attention 2 (split + merge),
//           o GEMV 1, add+RMSNorm 1, gate/up GEMV 2, SiLU·up 1, down GEMV 1            = 15
//   after:  add+RMSNorm 1, q/k/v GEMV 1 (gemv.cu, parts), RoPE+KV store 1, attention 2,
//           o GEMV 1, add+RMSNorm 1, gate/up GEMV + SiLU·up 1 (gemv.cu), down GEMV 1     = 9
// The residual add and the RMSNorm that follows were already one kernel (lp_add_rmsnorm writes
// both the new residual and the normed input). Q/K norms (Qwen3) and biases (Qwen2) stay
// separate launches. With adapters on gate/up the products go through the parts GEMV (one
// launch) and the SiLU stays separate, since the deltas come between them. The two add+RMSNorm
// launches go too with LORAPLEX_NORM_GEMV (on by default, cuda/fused.go says on what figures): gemv.cu folds each
// norm into the GEMV that reads it, every warp recomputing its rows' sum of squares from the
// loads it makes anyway (7 launches per layer then; gemv.cu has the design and its cost).
//
// lp_rope_store_kv: one block per (row, head slot): slots 0..heads-1 rotate a query head in place;
// slots heads.. rotate a key head in place and write it and the matching value head to the bf16
// caches at the row's slot. The keys are still written back in fp32 (as lp_rope leaves them), so
// the fused op leaves exactly the state of lp_rope(q), lp_rope(k), lp_store_kv(k, v): a few KB per
// layer, and nothing downstream has to know which path ran.
//
// Tolerance against the unfused path: none needed in principle. Every value is computed by the
// same expressions (rotate-half with the same table, round-to-nearest-even to bf16) from the
// same inputs; only where nvcc contracts a*c - b*s into an FMA differently in the two kernels can
// a rotated value differ, by one fp32 ulp. The tests compare with the CPU backend at the bf16
// bound and with the unfused GPU path at 1e-6 of the largest value.
// Determinism: no atomics, each output element written by one thread. Graph replay: the launch
// shape depends only on the row count and the head counts (both fixed by a step's key); positions
// and slots are read from the step's metadata, which replays re-upload.
//
// Programmatic dependent launch (pdl, common.cuh): every block reads the q/k/v the GEMV before
// it wrote, so it waits at once.
// Off switch: LORAPLEX_FUSED_DECODE=off (or on), read by cuda.New; Backend.SetFusedDecode. It
// turns all three fusions (q/k/v parts GEMV, RoPE + KV store, gate/up + SwiGLU) on or off together.
#include "common.cuh"

__global__ void rope_store_kv_kernel(float* q, float* k, const float* v, uint16_t* kc, uint16_t* vc,
                                     const int32_t* positions, const int32_t* slots, const float* table,
                                     int heads, int kv_heads, int dim) {
    lp_pdl_launch_dependents();
    lp_pdl_wait();
    const int row = blockIdx.x, h = blockIdx.y, half = dim / 2;
    const float* t = table + (size_t)positions[row] * dim;
    if (h < heads) {
        float* x = q + ((size_t)row * heads + h) * dim;
        for (int j = threadIdx.x; j < half; j += blockDim.x) {
            float ra, rb;
            rope_rotate(x[j], x[j + half], t[j], t[half + j], ra, rb);
            x[j] = ra;
            x[j + half] = rb;
        }
        return;
    }
    const int width = kv_heads * dim;
    const size_t src = (size_t)row * width + (size_t)(h - heads) * dim;
    const size_t dst = (size_t)slots[row] * width + (size_t)(h - heads) * dim;
    float* x = k + src;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float ra, rb;
        rope_rotate(x[j], x[j + half], t[j], t[half + j], ra, rb);
        x[j] = ra;
        x[j + half] = rb;
        kc[dst + j] = f32_to_bf16(ra);
        kc[dst + j + half] = f32_to_bf16(rb);
        vc[dst + j] = f32_to_bf16(v[src + j]);
        vc[dst + j + half] = f32_to_bf16(v[src + j + half]);
    }
}

extern "C" int lp_rope_store_kv(float* q, float* k, const float* v, uint16_t* kcache, uint16_t* vcache,
                                const int32_t* positions, const int32_t* slots, const float* table, int n, int heads,
                                int kv_heads, int head_dim, int pdl, lp_stream s) {
    if (n == 0) return 0;
    if (n < 0 || heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 || heads + kv_heads > 65535 ||
        !lp_head_dim_ok(head_dim))
        return (int)cudaErrorInvalidValue;
    lp_launch(rope_store_kv_kernel, dim3(n, heads + kv_heads), 64, 0, as_stream(s), pdl, q, k, v, kcache, vcache, positions,
              slots, table, heads, kv_heads, head_dim);
    LP_CHECK_LAUNCH();
}
