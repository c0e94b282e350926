// Causal attention for prefill chunks, tiled so keys and values are read once per tile of
// queries instead of once per query row.
//
// One block per (query tile, head). A tile is up to TQ consecutive rows of one sequence (a
// prefill chunk: consecutive positions). The block walks the key range in tiles of TK
// positions. Keys and values of a tile are copied to shared memory with 16-byte loads (one
// block-table lookup per key row) and stored as 32-bit words with an odd row pitch, so that
// lanes reading different keys, or consecutive dimensions, hit different banks. Each warp owns
// TQ / LP_ATTN_WARPS query rows: lanes take one key each and compute that key's score for all
// of the warp's rows at once (every key element loaded once, several independent FMA chains);
// an online softmax (running max m, sum l) rescales the accumulators; lanes then take pairs of
// head dimensions for the weighted sum of values.
#include <math.h>
#include "common.cuh"

#define TQ 32
#define TK 32
#define ROWS_PER_WARP (TQ / LP_ATTN_WARPS)
#define PAIRS (LP_MAX_HEAD_DIM / 64)  // dimension pairs per lane

__global__ void __launch_bounds__(32 * LP_ATTN_WARPS, 3) attention_prefill_kernel(float* out, const float* q, const uint16_t* kc, const uint16_t* vc,
                                         const int32_t* positions, const int32_t* tiles, const int32_t* seq_pages,
                                         const int32_t* page_table, int heads, int kv_heads, int D, int page_size,
                                         int window, float scale) {
    extern __shared__ float smem[];
    const int start = tiles[3 * blockIdx.x], n = tiles[3 * blockIdx.x + 1], seq = tiles[3 * blockIdx.x + 2];
    const int h = blockIdx.y, kvh = h / (heads / kv_heads), width = kv_heads * D;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int words = D / 2, pitch = words + 1;  // odd pitch in 32-bit words: conflict-free reads
    float* qs = smem;                                       // [TQ][D] fp32, pre-scaled
    uint32_t* ks = reinterpret_cast<uint32_t*>(smem + TQ * D);  // [TK][pitch] bf16 pairs
    uint32_t* vs = ks + TK * pitch;
    const int32_t* pages = page_table + seq_pages[seq];
    const int pos0 = positions[start];

    for (int i = threadIdx.x; i < TQ * D; i += blockDim.x) {
        int r = i / D, d = i - r * D;
        qs[i] = r < n ? q[((size_t)(start + r) * heads + h) * D + d] * scale : 0.f;
    }

    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], acc[ROWS_PER_WARP][PAIRS][2];
#pragma unroll
    for (int i = 0; i < ROWS_PER_WARP; i++) {
        m[i] = -INFINITY;
        l[i] = 0.f;
#pragma unroll
        for (int j = 0; j < PAIRS; j++) acc[i][j][0] = acc[i][j][1] = 0.f;
    }
    const int hi = pos0 + n - 1;
    const int lo = window > 0 ? max(0, pos0 - window + 1) : 0;
    const int vecs = D / 8;  // 16-byte vectors per key row
    for (int t0 = lo; t0 <= hi; t0 += TK) {
        __syncthreads();
        for (int v = threadIdx.x; v < TK * vecs; v += blockDim.x) {
            const int k = v / vecs, c = v - k * vecs, t = t0 + k;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
            if (t <= hi) {
                const size_t off = ((size_t)pages[t / page_size] * page_size + t % page_size) * width + (size_t)kvh * D + 8 * c;
                kv = *reinterpret_cast<const uint4*>(kc + off);
                vv = *reinterpret_cast<const uint4*>(vc + off);
            }
            uint32_t* kd = ks + k * pitch + 4 * c;
            uint32_t* vd = vs + k * pitch + 4 * c;
            kd[0] = kv.x, kd[1] = kv.y, kd[2] = kv.z, kd[3] = kv.w;
            vd[0] = vv.x, vd[1] = vv.y, vd[2] = vv.z, vd[3] = vv.w;
        }
        __syncthreads();

        float sc[ROWS_PER_WARP];
#pragma unroll
        for (int i = 0; i < ROWS_PER_WARP; i++) sc[i] = 0.f;
        {
            const uint32_t* kr = ks + lane * pitch;
            const float* qw = qs + warp * ROWS_PER_WARP * D;
            for (int w = 0; w < words; w++) {
                const uint32_t u = kr[w];
                const float k0 = __uint_as_float(u << 16), k1 = __uint_as_float(u & 0xffff0000u);
#pragma unroll
                for (int i = 0; i < ROWS_PER_WARP; i++) {
                    const float2 qq = *reinterpret_cast<const float2*>(qw + i * D + 2 * w);
                    sc[i] += qq.x * k0 + qq.y * k1;
                }
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
                for (int j = 0; j < PAIRS; j++) acc[i][j][0] *= corr, acc[i][j][1] *= corr;
                for (int k = 0; k < TK; k++) {
                    const float pk = __shfl_sync(0xffffffffu, p, k);
                    const uint32_t* vr = vs + k * pitch;
#pragma unroll
                    for (int j = 0; j < PAIRS; j++) {
                        const int w = lane + 32 * j;
                        if (w < words) {
                            const uint32_t u = vr[w];
                            acc[i][j][0] += pk * __uint_as_float(u << 16);
                            acc[i][j][1] += pk * __uint_as_float(u & 0xffff0000u);
                        }
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
        for (int j = 0; j < PAIRS; j++) {
            const int w = lane + 32 * j;
            if (w < words) {
                orow[2 * w] = acc[i][j][0] / l[i];
                orow[2 * w + 1] = acc[i][j][1] / l[i];
            }
        }
    }
}

extern "C" int lp_attention_prefill(float* out, const float* q, const uint16_t* kcache, const uint16_t* vcache,
                                    const int32_t* positions, const int32_t* tiles, int num_tiles,
                                    const int32_t* seq_pages, const int32_t* page_table, int heads, int kv_heads,
                                    int head_dim, int page_size, int window, float scale, lp_stream s) {
    if (num_tiles <= 0) return 0;
    // 16-byte row loads need head_dim % 8 == 0 (the per-row kernel takes any even head_dim).
    if (heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 || !lp_head_dim_ok(head_dim) || head_dim % 8 != 0 ||
        page_size <= 0)
        return (int)cudaErrorInvalidValue;
    size_t smem = (size_t)TQ * head_dim * sizeof(float) + 2 * (size_t)TK * (head_dim / 2 + 1) * sizeof(uint32_t);
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
