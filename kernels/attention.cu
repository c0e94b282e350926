// Causal attention over the paged KV cache for decode rows (prefill chunks use the tiled
// kernel in attention_prefill.cu; this one is also the fallback for any row).
//
// One block per (row, head). Its LP_ATTN_WARPS warps take interleaved positions of the
// sequence and each keeps an online softmax (running max m, normaliser l, weighted value sum
// acc): the flash-attention recurrence, so scores are never stored. Lanes split the head
// dimension (up to 8 values each), a warp reduction gives each score. At the end the warps'
// partial results are merged through shared memory with the usual rescaling by exp(m_w - M).
// Keys and values are read through the sequence's block table, so pages can live anywhere.
//
// GQA/MQA: head h reads kv head h / (heads / kv_heads); the group's heads hit the same pages,
// which then come from L2.
#include <math.h>
#include "common.cuh"

#define PER_LANE (LP_MAX_HEAD_DIM / 32)
// Decode rows have no query tile to share work over, so each (row, head) gets more warps: at
// short contexts the walk over positions is latency-bound, and more warps shorten it.
#define DECODE_WARPS 8

__global__ void attention_kernel(float* out, const float* q, const uint16_t* kc, const uint16_t* vc,
                                 const int32_t* positions, const int32_t* rows, const int32_t* row_seq,
                                 const int32_t* seq_pages, const int32_t* page_table, int heads, int kv_heads, int D,
                                 int page_size, int window, float scale) {
    const int row = rows[blockIdx.x], h = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kvh = h / (heads / kv_heads);
    const int width = kv_heads * D;
    const int pos = positions[row];
    const int first = window > 0 ? max(0, pos - window + 1) : 0;
    const int32_t* pages = page_table + seq_pages[row_seq[row]];
    const float* qr = q + ((size_t)row * heads + h) * D;

    float qv[PER_LANE], acc[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        int j = lane + 32 * i;
        qv[i] = j < D ? qr[j] * scale : 0.f;
        acc[i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int t = first + warp; t <= pos; t += DECODE_WARPS) {
        size_t base = ((size_t)pages[t / page_size] * page_size + t % page_size) * width + (size_t)kvh * D;
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) {
            int j = lane + 32 * i;
            if (j < D) s += qv[i] * bf16_to_f32(kc[base + j]);
        }
        s = warp_sum(s);
        float mn = fmaxf(m, s);
        float corr = __expf(m - mn), p = __expf(s - mn);
        l = l * corr + p;
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) {
            int j = lane + 32 * i;
            if (j < D) acc[i] = acc[i] * corr + p * bf16_to_f32(vc[base + j]);
        }
        m = mn;
    }

    __shared__ float sm[DECODE_WARPS], sl[DECODE_WARPS];
    __shared__ float sacc[DECODE_WARPS][LP_MAX_HEAD_DIM];
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        int j = lane + 32 * i;
        if (j < D) sacc[warp][j] = acc[i];
    }
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < DECODE_WARPS; w++)
        if (sl[w] > 0.f) M = fmaxf(M, sm[w]);
    float L = 0.f;
    for (int w = 0; w < DECODE_WARPS; w++)
        if (sl[w] > 0.f) L += sl[w] * __expf(sm[w] - M);
    float* orow = out + ((size_t)row * heads + h) * D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float o = 0.f;
        for (int w = 0; w < DECODE_WARPS; w++)
            if (sl[w] > 0.f) o += sacc[w][j] * __expf(sm[w] - M);
        orow[j] = o / L;
    }
}

extern "C" int lp_attention(float* out, const float* q, const uint16_t* kcache, const uint16_t* vcache,
                            const int32_t* positions, const int32_t* rows, const int32_t* row_seq,
                            const int32_t* seq_pages, const int32_t* page_table, int n, int heads, int kv_heads,
                            int head_dim, int page_size, int window, float scale, lp_stream s) {
    if (n == 0) return 0;
    if (n < 0 || heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 || !lp_head_dim_ok(head_dim) || page_size <= 0)
        return (int)cudaErrorInvalidValue;
    dim3 grid(n, heads);
    attention_kernel<<<grid, 32 * DECODE_WARPS, 0, as_stream(s)>>>(out, q, kcache, vcache, positions, rows, row_seq,
                                                                     seq_pages, page_table, heads, kv_heads,
                                                                     head_dim, page_size, window, scale);
    LP_CHECK_LAUNCH();
}
