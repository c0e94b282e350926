// Causal attention for prefill chunks, tiled so keys and values are read once per tile of
// queries instead of once per query row.
//
// One block per (query tile, head). A tile is up to TQ consecutive rows of one sequence (a
// prefill chunk: consecutive positions). The block walks the key range in tiles of TK
// positions: the keys and values of a tile go to shared memory (bf16, rows padded by one
// element so lanes reading different keys hit different banks), then each warp updates its
// query rows: lanes take one key each for the scores, an online softmax (running max m, sum l)
// rescales the accumulator, and lanes take head dimensions for the weighted sum of values.
// Work per query row is the same as the per-row kernel; global traffic drops by TQ times.
#include <math.h>
#include "common.cuh"

#define TQ 32
#define TK 32
#define ROWS_PER_WARP (TQ / LP_ATTN_WARPS)
#define PER_LANE (LP_MAX_HEAD_DIM / 32)

__global__ void attention_prefill_kernel(float* out, const float* q, const uint16_t* kc, const uint16_t* vc,
                                         const int32_t* positions, const int32_t* tiles, const int32_t* seq_pages,
                                         const int32_t* page_table, int heads, int kv_heads, int D, int page_size,
                                         int window, float scale) {
    extern __shared__ float smem[];
    const int start = tiles[3 * blockIdx.x], n = tiles[3 * blockIdx.x + 1], seq = tiles[3 * blockIdx.x + 2];
    const int h = blockIdx.y, kvh = h / (heads / kv_heads), width = kv_heads * D;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int pitch = D + 1;  // padded bf16 row length in shared memory
    float* qs = smem;                                     // [TQ][D] fp32, pre-scaled
    uint16_t* ks = (uint16_t*)(smem + TQ * D);            // [TK][pitch]
    uint16_t* vs = ks + TK * pitch;                       // [TK][pitch]
    const int32_t* pages = page_table + seq_pages[seq];
    const int pos0 = positions[start];

    for (int i = threadIdx.x; i < TQ * D; i += blockDim.x) {
        int r = i / D, d = i % D;
        qs[i] = r < n ? q[((size_t)(start + r) * heads + h) * D + d] * scale : 0.f;
    }

    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], acc[ROWS_PER_WARP][PER_LANE];
#pragma unroll
    for (int i = 0; i < ROWS_PER_WARP; i++) {
        m[i] = -INFINITY;
        l[i] = 0.f;
#pragma unroll
        for (int j = 0; j < PER_LANE; j++) acc[i][j] = 0.f;
    }
    const int hi = pos0 + n - 1;
    const int lo = window > 0 ? max(0, pos0 - window + 1) : 0;
    for (int t0 = lo; t0 <= hi; t0 += TK) {
        __syncthreads();
        for (int i = threadIdx.x; i < TK * D; i += blockDim.x) {
            int k = i / D, d = i % D, t = t0 + k;
            uint16_t kv = 0, vv = 0;
            if (t <= hi) {
                size_t off = ((size_t)pages[t / page_size] * page_size + t % page_size) * width + (size_t)kvh * D + d;
                kv = kc[off];
                vv = vc[off];
            }
            ks[k * pitch + d] = kv;
            vs[k * pitch + d] = vv;
        }
        __syncthreads();
        // Scores of the warp's rows against the lane's key: each key element is loaded once and
        // used for all rows, which also gives ROWS_PER_WARP independent FMA chains.
        float sc[ROWS_PER_WARP];
#pragma unroll
        for (int i = 0; i < ROWS_PER_WARP; i++) sc[i] = 0.f;
        {
            const uint16_t* kr = ks + lane * pitch;
            const float* qw = qs + warp * ROWS_PER_WARP * D;
            for (int d = 0; d < D; d++) {
                const float kd = bf16_to_f32(kr[d]);
#pragma unroll
                for (int i = 0; i < ROWS_PER_WARP; i++) sc[i] += qw[i * D + d] * kd;
            }
        }
#pragma unroll
        for (int i = 0; i < ROWS_PER_WARP; i++) {
            const int r = warp * ROWS_PER_WARP + i;
            // Conditions, not break/continue, keep the loop unrolled and acc in registers.
            const int pos = pos0 + r;
            const int rlo = window > 0 ? pos - window + 1 : 0;
            const int t = t0 + lane;
            const bool valid = r < n && t <= pos && t >= rlo;
            const float s = valid ? sc[i] : -INFINITY;
            float mt = s;
            for (int o = 16; o > 0; o >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
            if (mt != -INFINITY) {  // uniform across the warp: some key of this tile is visible
                const float mn = fmaxf(m[i], mt);
                const float corr = __expf(m[i] - mn);
                const float p = valid ? __expf(s - mn) : 0.f;
                l[i] = l[i] * corr + warp_sum(p);
#pragma unroll
                for (int j = 0; j < PER_LANE; j++) acc[i][j] *= corr;
                for (int k = 0; k < TK; k++) {
                    const float pk = __shfl_sync(0xffffffffu, p, k);
                    const uint16_t* vr = vs + k * pitch;
#pragma unroll
                    for (int j = 0; j < PER_LANE; j++) {
                        int d = lane + 32 * j;
                        if (d < D) acc[i][j] += pk * bf16_to_f32(vr[d]);
                    }
                }
                m[i] = mn;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < ROWS_PER_WARP; i++) {
        const int r = warp * ROWS_PER_WARP + i;
        if (r >= n) continue;
        float* orow = out + ((size_t)(start + r) * heads + h) * D;
#pragma unroll
        for (int j = 0; j < PER_LANE; j++) {
            int d = lane + 32 * j;
            if (d < D) orow[d] = acc[i][j] / l[i];
        }
    }
}

extern "C" int lp_attention_prefill(float* out, const float* q, const uint16_t* kcache, const uint16_t* vcache,
                                    const int32_t* positions, const int32_t* tiles, int num_tiles,
                                    const int32_t* seq_pages, const int32_t* page_table, int heads, int kv_heads,
                                    int head_dim, int page_size, int window, float scale, lp_stream s) {
    if (num_tiles <= 0) return 0;
    if (heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 || !lp_head_dim_ok(head_dim) || page_size <= 0)
        return (int)cudaErrorInvalidValue;
    size_t smem = (size_t)TQ * head_dim * sizeof(float) + 2 * (size_t)TK * (head_dim + 1) * sizeof(uint16_t);
    static size_t configured = 0;
    if (smem > 48 * 1024 && smem > configured) {
        cudaError_t e = cudaFuncSetAttribute(attention_prefill_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return (int)e;
        configured = smem;
    }
    dim3 grid(num_tiles, heads);
    attention_prefill_kernel<<<grid, 32 * LP_ATTN_WARPS, smem, as_stream(s)>>>(out, q, kcache, vcache, positions, tiles,
                                                                              seq_pages, page_table, heads, kv_heads,
                                                                              head_dim, page_size, window, scale);
    LP_CHECK_LAUNCH();
}
