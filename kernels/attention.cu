// Causal attention over the paged KV cache for decode rows (prefill chunks use the tiled
// kernel in attention_prefill.cu; this one is also the fallback for any row).
//
// Split-K (flash-decoding): one block per (row, head, split). The visible positions of a row are
// cut into up to LP_DECODE_SPLITS contiguous chunks so that even a single long sequence spreads over
// heads x splits blocks instead of heads blocks; a second small kernel merges the splits'
// partial softmax states. The split count is never derived from the context length, so a
// decode step's launch shape never depends on how long its sequences are, which keeps recorded
// CUDA graphs valid; splits that get no positions exit at once. Big decode batches, which
// already fill the GPU with (row, head) blocks, use fewer splits (down to one).
// Inside a block, DECODE_WARPS warps take interleaved positions of the chunk and each keeps an online softmax (running max m, normaliser l, weighted value sum
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

__global__ void attention_kernel(float* out, float* part_o, float* part_ml, const float* q, const uint16_t* kc,
                                 const uint16_t* vc, const int32_t* positions, const int32_t* rows,
                                 const int32_t* row_seq, const int32_t* seq_pages, const int32_t* page_table,
                                 int heads, int kv_heads, int D, int page_size, int window, float scale) {
    const int row = rows[blockIdx.x], h = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kvh = h / (heads / kv_heads);
    const int width = kv_heads * D;
    const int pos = positions[row];
    const int first = window > 0 ? max(0, pos - window + 1) : 0;
    const int chunk = (pos - first + splits) / splits;  // ceil(visible / splits)
    const int begin = first + split * chunk, end = min(pos, begin + chunk - 1);
    const size_t slot = ((size_t)blockIdx.x * heads + h) * splits + split;
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
    for (int t = begin + warp; t <= end; t += DECODE_WARPS) {
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
    if (splits == 1) {
        // Unsplit (big batches): the block has the whole softmax, so it writes the final row
        // itself; a round trip through the partials and a merge launch would only add traffic.
        float* orow = out + ((size_t)row * heads + h) * D;
        for (int j = threadIdx.x; j < D; j += blockDim.x) {
            float o = 0.f;
            for (int w = 0; w < DECODE_WARPS; w++)
                if (sl[w] > 0.f) o += sacc[w][j] * __expf(sm[w] - M);
            orow[j] = o / L;
        }
        return;
    }
    // The split's state: its max, its normaliser and its unnormalised output (L = 0: empty).
    if (threadIdx.x == 0) {
        part_ml[2 * slot] = M;
        part_ml[2 * slot + 1] = L;
    }
    float* po = part_o + slot * D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float o = 0.f;
        for (int w = 0; w < DECODE_WARPS; w++)
            if (sl[w] > 0.f) o += sacc[w][j] * __expf(sm[w] - M);
        po[j] = o;
    }
}

// attention_merge_kernel combines a (row, head)'s split states: out = sum_z O_z e^(M_z - M) /
// sum_z L_z e^(M_z - M), M the largest split max.
__global__ void attention_merge_kernel(float* out, const float* part_o, const float* part_ml, const int32_t* rows,
                                       int heads, int D, int splits) {
    const int row = rows[blockIdx.x], h = blockIdx.y;
    const size_t slot0 = ((size_t)blockIdx.x * heads + h) * splits;
    float M = -INFINITY;
    for (int z = 0; z < splits; z++)
        if (part_ml[2 * (slot0 + z) + 1] > 0.f) M = fmaxf(M, part_ml[2 * (slot0 + z)]);
    float L = 0.f;
    for (int z = 0; z < splits; z++) {
        const float lz = part_ml[2 * (slot0 + z) + 1];
        if (lz > 0.f) L += lz * __expf(part_ml[2 * (slot0 + z)] - M);
    }
    float* orow = out + ((size_t)row * heads + h) * D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float o = 0.f;
        for (int z = 0; z < splits; z++)
            if (part_ml[2 * (slot0 + z) + 1] > 0.f) o += part_o[(slot0 + z) * D + j] * __expf(part_ml[2 * (slot0 + z)] - M);
        orow[j] = o / L;
    }
}

extern "C" int lp_attention(float* out, const float* q, const uint16_t* kcache, const uint16_t* vcache,
                            const int32_t* positions, const int32_t* rows, const int32_t* row_seq,
                            const int32_t* seq_pages, const int32_t* page_table, int n, int heads, int kv_heads,
                            int head_dim, int page_size, int window, float scale, int fixed_splits, float* scratch,
                            lp_stream s) {
    if (n == 0) return 0;
    if (n < 0 || heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 || !lp_head_dim_ok(head_dim) || page_size <= 0 ||
        scratch == nullptr || fixed_splits < 0 || fixed_splits > LP_DECODE_SPLITS)
        return (int)cudaErrorInvalidValue;
    // Split only as far as it takes to fill the GPU: a big decode batch already has enough
    // (row, head) blocks, and splitting it would only add merge work. The count depends on the
    // step's row count alone, which is part of a recorded graph's key.
    static int sms = 0;  // multiprocessors of the (one) device this process uses
    if (sms == 0) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
            sms = 132;
    }
    int splits = LP_DECODE_SPLITS;
    while (splits > 1 && (long)n * heads * splits > 4L * sms) splits /= 2;
    // A fixed count (deterministic mode): the chunk boundaries, each split's order over its
    // positions and the merge then depend on the row's position alone, whatever the batch.
    if (fixed_splits > 0) splits = fixed_splits;
    // scratch: [n][heads][splits][head_dim] outputs, then [n][heads][splits][2] (max, sum).
    float* part_o = scratch;
    float* part_ml = scratch + (size_t)n * heads * splits * head_dim;
    dim3 grid(n, heads, splits);
    attention_kernel<<<grid, 32 * DECODE_WARPS, 0, as_stream(s)>>>(out, part_o, part_ml, q, kcache, vcache, positions, rows,
                                                                   row_seq, seq_pages, page_table, heads, kv_heads,
                                                                   head_dim, page_size, window, scale);
    if (splits > 1)
        attention_merge_kernel<<<dim3(n, heads), 128, 0, as_stream(s)>>>(out, part_o, part_ml, rows, heads, head_dim, splits);
    LP_CHECK_LAUNCH();
}

extern "C" size_t lp_attention_scratch_floats(int n, int heads, int head_dim) {
    return (size_t)n * heads * LP_DECODE_SPLITS * (head_dim + 2);
}
