// Causal attention over the paged KV cache for decode rows (prefill chunks use the tiled
// kernel in attention_prefill.cu; this one is also the fallback for any row).
//
// Split-K (flash-decoding): one block per (row, head, split). The visible positions of a row are
// cut into up to gridDim.z contiguous chunks so that even a single long sequence spreads over
// heads x splits blocks instead of heads blocks; a second small kernel merges the splits'
// partial softmax states. (The grouped kernel's last split block of a row and kv head merging
// them itself, found by a fenced atomic count, measured slower on an H100, batch-1 decode 0.96x
// at 128 positions and 0.86x at 4,096: the merge kernel stays.) A row's own split count is
//     splits(row) = min(gridDim.z, ceil(visible / split_chunk)),  visible = positions it attends to,
// and its chunks are ceil(visible / splits(row)) positions each. Blocks of splits beyond the
// row's own exit at once; a row with one split writes its output directly (no merge: a round
// trip through the partials only adds traffic). The host chooses the grid depth and the chunk
// floor by one of two fixed rules (cuda/attention.go decodeSplits, LORAPLEX_DECODE_SPLIT):
//   fill (default): depth LP_DECODE_SPLITS for this kernel (LP_DECODE_MAX_SPLITS, 64, or
//     LP_DECODE_DEPTH, 32, with LORAPLEX_DECODE_DEEP=off, for the grouped one), halved while rows x blocks x depth > 4 x SMs,
//     chunk floor 1 here (LORAPLEX_GQ_FILL_CHUNK, 128 by default, for the grouped kernel): split
//     only as far as it takes to fill the GPU; big decode batches, which fill it with (row,
//     head) blocks already, run unsplit. The depth depends on the step's row count, so a row's
//     result may change with the batch it is in (in its last bits: a different summation
//     order).
//   context: chunk floor LP_DECODE_SPLIT_CHUNK, depth the largest split count of the step's
//     rows (at most LP_DECODE_MAX_SPLITS, or LP_DECODE_DEPTH with LORAPLEX_DECODE_DEEP=off): a row's
//     split count depends on its own context length only, not on the other rows or its place
//     among them, so its result is bitwise the same alone or in any batch (the deterministic
//     mode's requirement). Rows of up to 128 positions run unsplit, so big batches of short
//     contexts pay nothing; 4k contexts get 32 chunks of 128 positions and 8k and longer the
//     full depth (chunks of 128 to 512 positions at 32k), which fills the GPU from batch 1. The merge
//     costs (head_dim + 2) fp32 per (row, head, split), written and read once, against the
//     chunk's K/V (chunk x head_dim x 2 bf16 values) the split reads: 1.6% more bytes at chunk
//     128 and head_dim 128, 6% where a GQA group of 4 heads shares each K/V read.
// Graph replay: the grid depth is part of the launch, so a depth that follows the step's
// contexts (the context rule's, deterministic mode's) is added to the step's graph key (graph.go,
// decodeDepthKey); the fill rule's depends on the row count alone, which the key already holds.
// Inside a block, DECODE_WARPS warps take interleaved positions of the chunk and each keeps an online softmax (running max m, normaliser l, weighted value sum
// acc): the flash-attention recurrence, so scores are never stored. Lanes split the head
// dimension (up to 8 values each), a warp reduction gives each score. At the end the warps'
// partial results are merged through shared memory with the usual rescaling by exp(m_w - M).
// Keys and values are read through the sequence's block table, so pages can live anywhere.
//
// GQA/MQA: head h reads kv head h / (heads / kv_heads); the group's heads hit the same pages,
// which then come from L2.
//
// Programmatic dependent launch (pdl, common.cuh): the three kernels read q (or the partials)
// and the KV position the kernel before them wrote, so each waits at once, before it reads its
// row's range or exits; the o projection's GEMV after them gets its blocks in early.
#include <math.h>
#include "common.cuh"

#define PER_LANE (LP_MAX_HEAD_DIM / 32)
// Decode rows have no query tile to share work over, so each (row, head) gets more warps: at
// short contexts the walk over positions is latency-bound, and more warps shorten it.
#define DECODE_WARPS 8

// row_splits is a row's own split count (see the top of the file): it depends on the row's
// visible positions, the grid depth and the chunk floor, never on the other rows.
__device__ __forceinline__ int row_splits(int visible, int depth, int split_chunk) {
    const int s = (visible + split_chunk - 1) / split_chunk;
    return s < depth ? s : depth;
}

// decode_range is split `split`'s share of a decode row at position pos: the row's split count
// (row_splits over its visible positions, the last `window` ones when window > 0) and the
// split's positions [begin, end], ceil(visible / splits) a split; begin > end when the split is
// empty (the last splits of a row whose visible count the chunk does not divide).
struct DecodeRange {
    int splits, begin, end;
};
__device__ __forceinline__ DecodeRange decode_range(int pos, int window, int depth, int split_chunk, int split) {
    const int first = window > 0 ? max(0, pos - window + 1) : 0;
    const int splits = row_splits(pos - first + 1, depth, split_chunk);
    const int chunk = (pos - first + splits) / splits;  // ceil(visible / splits)
    const int begin = first + split * chunk;
    return DecodeRange{splits, begin, min(pos, begin + chunk - 1)};
}

__global__ void attention_kernel(float* out, float* part_o, float* part_ml, const float* q, const uint16_t* kc,
                                 const uint16_t* vc, const int32_t* positions, const int32_t* rows,
                                 const int32_t* row_seq, const int32_t* seq_pages, const int32_t* page_table,
                                 int heads, int kv_heads, int D, int page_size, int window, float scale, int split_chunk) {
    lp_pdl_launch_dependents();
    lp_pdl_wait();
    const int row = rows[blockIdx.x], h = blockIdx.y, split = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kvh = h / (heads / kv_heads);
    const int width = kv_heads * D;
    const DecodeRange rg = decode_range(positions[row], window, gridDim.z, split_chunk, split);
    if (split >= rg.splits) return;  // uniform over the block: no thread reaches the barrier
    const int splits = rg.splits, begin = rg.begin, end = rg.end;
    const size_t slot = ((size_t)blockIdx.x * heads + h) * gridDim.z + split;
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

// ---- Grouped decode attention (lp_attention with LP_ATTN_GROUPED) ----
//
// The per-head kernel above reads a row's keys and values once per query head: under GQA the
// G = heads / kv_heads heads of a group read the same pages, and only L2 saves the second to
// G-th read; one warp per position, one 2-byte value per lane and a warp reduction per score
// keep it latency-bound (on an H100, batch-1 decode at 32k positions ran at 0.27 of the weights
// + KV roofline; with this kernel 0.66, bench/results/gpu-h100/goals-2026-12-07-ab). This kernel
// gives one block to (row, kv head, split) and computes all G heads
// of the group, so every K/V byte is read from memory once per row, in full 32-byte sectors:
//   A. thread i scores key i of a tile of GQ_TILE positions against the G queries (held in
//      shared memory, scaled): it reads the key's D bf16 itself, 16 bytes a load, eight loads in
//      flight, and needs no cross-lane reduction;
//   B. one warp per head takes the tile's max, turns scores into exp(s - max) in place, sums
//      them, and updates the head's running max and normaliser (flash-attention recurrence,
//      rescale factor kept for C);
//   C. threads split as (key lane, 8-dim vector of the head): each rescales its G x 8
//      accumulators once per tile and adds p x v for its keys, consecutive threads reading
//      consecutive 16-byte vectors of one V row.
// At the end the key lanes' accumulators are summed through shared memory in lane order.
// Splitting, the partial states and the merge are the per-head kernel's (same scratch layout,
// same attention_merge_kernel, same row_splits), and every order above (tiles, key lanes, the
// warp reductions) is fixed by the row's visible range, the grid depth and the chunk floor, so
// the batch-invariance argument at the top of the file holds unchanged. Results differ from the
// per-head kernel in the last bits (another summation order) and stay within the bf16
// tolerance the sweep tests hold both to. Head dims that are multiples of 16 up to
// LP_MAX_HEAD_DIM and groups of up to LP_GQ_MAX_GROUP (lp_attention_grouped_ok); anything else
// takes the per-head kernel.
// Values asked of L2 early (LP_ATTN_PREFETCH_V, LORAPLEX_GQ_PREFETCH): phase C reads a tile's
// values only after A and B, and a key lane's values in rounds of GQ_VAL_UNROLL loads, each
// round a page-table read and then a round trip to memory. At short contexts that latency is
// what the kernel costs: at batch 1 and 128 positions one block per kv head streams 0.5 MB a
// layer in ~13 us (bench/results/gpu-h100/goals-2026-12-07-final3/breakdown.txt: ~8% of a
// batch-1 step's time). With the flag, phase A's thread also asks L2 for its key's value
// row (prefetch.global.L2, a hint: no register, no wait, no fault), so the values travel while
// the keys are scored and C finds them in L2. A hint changes no arithmetic: outputs are bitwise
// those without it (TestDecodeSplitRules), and the flag is a backend switch, so a recording
// holds one or the other launch.
#define GQ_THREADS 128
#define GQ_TILE GQ_THREADS  // phase A gives each thread one key of the tile
#define GQ_KEY_LOADS 8      // 16-byte loads of one key in flight per thread (phase A)
#define GQ_VAL_UNROLL 4     // values in flight per thread (phase C)

// prefetch_l2 asks L2 for the lines of [p, p + bytes), bytes > 0 (prefetch.global.L2 hints).
__device__ __forceinline__ void prefetch_l2(const void* p, int bytes) {
    const char* c = static_cast<const char*>(p);
    for (int o = 0; o < bytes; o += 128) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(c + o));
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(c + bytes - 1));  // the last line, where p is not 128-byte aligned
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

template <int G>
__global__ void __launch_bounds__(GQ_THREADS)
    attention_grouped_kernel(float* out, float* part_o, float* part_ml, const float* q, const uint16_t* kc,
                             const uint16_t* vc, const int32_t* positions, const int32_t* rows, const int32_t* row_seq,
                             const int32_t* seq_pages, const int32_t* page_table, int heads, int kv_heads, int D,
                             int page_size, int window, float scale, int split_chunk, int prefetch_v) {
    lp_pdl_launch_dependents();
    lp_pdl_wait();
    const int row = rows[blockIdx.x], kvh = blockIdx.y, split = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int width = kv_heads * D;
    const DecodeRange rg = decode_range(positions[row], window, gridDim.z, split_chunk, split);
    if (split >= rg.splits) return;  // uniform over the block: no thread reaches a barrier
    const int splits = rg.splits, begin = rg.begin, end = rg.end;
    const int32_t* pages = page_table + seq_pages[row_seq[row]];
    const int h0 = kvh * G;
    const int DV = D / 8;                        // 16-byte vectors in a head's slice
    const int KL = GQ_THREADS / DV;              // key lanes of phase C
    const int vec = tid % DV, kl = tid / DV;     // this thread's vector and key lane in phase C
    const bool active = kl < KL;                 // D = 80: 12 key lanes of 10 vectors, 8 threads idle

    __shared__ __align__(16) float qs[G][LP_MAX_HEAD_DIM];
    __shared__ float ps[G][GQ_TILE];
    __shared__ float run_m[G], run_l[G], corr[G];
    __shared__ __align__(16) float red[GQ_THREADS * 8 * G];  // [key lane][head][dim], KL * D <= 8 * GQ_THREADS

    for (int i = tid; i < G * D; i += GQ_THREADS) {
        const int g = i / D, d = i - g * D;
        qs[g][d] = q[((size_t)row * heads + h0 + g) * D + d] * scale;
    }
    if (tid < G) {
        run_m[tid] = -INFINITY;
        run_l[tid] = 0.f;
    }
    float acc[G][8];
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[g][j] = 0.f;
    __syncthreads();

    for (int t0 = begin; t0 <= end; t0 += GQ_TILE) {
        // A: this thread's key of the tile against the G queries.
        const int t = t0 + tid;
        float s[G];
#pragma unroll
        for (int g = 0; g < G; g++) s[g] = 0.f;
        if (t <= end) {
            const size_t base = ((size_t)pages[t / page_size] * page_size + t % page_size) * width + (size_t)kvh * D;
            if (prefetch_v) prefetch_l2(vc + base, D * 2);  // phase C's value row for this key
            const uint4* kr = reinterpret_cast<const uint4*>(kc + base);
            for (int v0 = 0; v0 < DV; v0 += GQ_KEY_LOADS) {
                uint4 kv[GQ_KEY_LOADS];
#pragma unroll
                for (int u = 0; u < GQ_KEY_LOADS; u++)
                    if (v0 + u < DV) kv[u] = __ldg(kr + v0 + u);
#pragma unroll
                for (int u = 0; u < GQ_KEY_LOADS; u++) {
                    if (v0 + u >= DV) break;
                    float kf[8];
                    bf16x8_unpack(kv[u], kf);
                    const int d = (v0 + u) * 8;
#pragma unroll
                    for (int g = 0; g < G; g++) {
                        const float4 a = *reinterpret_cast<const float4*>(&qs[g][d]);
                        const float4 b = *reinterpret_cast<const float4*>(&qs[g][d + 4]);
                        s[g] += a.x * kf[0] + a.y * kf[1] + a.z * kf[2] + a.w * kf[3] + b.x * kf[4] + b.y * kf[5] +
                                b.z * kf[6] + b.w * kf[7];
                    }
                }
            }
        }
#pragma unroll
        for (int g = 0; g < G; g++) ps[g][tid] = t <= end ? s[g] : -INFINITY;
        __syncthreads();

        // B: per head, the tile's softmax numerators and the running state.
        for (int g = warp; g < G; g += GQ_THREADS / 32) {
            float mx = -INFINITY;
            for (int i = lane; i < GQ_TILE; i += 32) mx = fmaxf(mx, ps[g][i]);
            mx = warp_max(mx);  // finite: the tile holds at least one visible key
            const float m_old = run_m[g], m_new = fmaxf(m_old, mx);
            float sum = 0.f;
            for (int i = lane; i < GQ_TILE; i += 32) {
                const float p = __expf(ps[g][i] - m_new);  // 0 for the -inf past the end
                ps[g][i] = p;
                sum += p;
            }
            sum = warp_sum(sum);
            if (lane == 0) {
                const float c = __expf(m_old - m_new);  // 0 on the first tile
                run_l[g] = run_l[g] * c + sum;
                run_m[g] = m_new;
                corr[g] = c;
            }
        }
        __syncthreads();

        // C: p x v for this thread's keys and vector.
        if (active) {
#pragma unroll
            for (int g = 0; g < G; g++) {
                const float c = corr[g];
#pragma unroll
                for (int j = 0; j < 8; j++) acc[g][j] *= c;
            }
            const int n = min(GQ_TILE, end - t0 + 1);
            for (int i0 = kl; i0 < n; i0 += KL * GQ_VAL_UNROLL) {
                uint4 vv[GQ_VAL_UNROLL];
#pragma unroll
                for (int u = 0; u < GQ_VAL_UNROLL; u++) {
                    const int i = i0 + u * KL;
                    if (i < n) {
                        const int tv = t0 + i;
                        const size_t base =
                            ((size_t)pages[tv / page_size] * page_size + tv % page_size) * width + (size_t)kvh * D;
                        vv[u] = __ldg(reinterpret_cast<const uint4*>(vc + base) + vec);
                    }
                }
#pragma unroll
                for (int u = 0; u < GQ_VAL_UNROLL; u++) {
                    const int i = i0 + u * KL;
                    if (i >= n) break;
                    float vf[8];
                    bf16x8_unpack(vv[u], vf);
#pragma unroll
                    for (int g = 0; g < G; g++) {
                        const float p = ps[g][i];
#pragma unroll
                        for (int j = 0; j < 8; j++) acc[g][j] += p * vf[j];
                    }
                }
            }
        }
        __syncthreads();  // the next tile's A overwrites ps
    }

    // The key lanes' sums, in lane order, then this block's output or split state.
    if (active) {
#pragma unroll
        for (int g = 0; g < G; g++)
#pragma unroll
            for (int j = 0; j < 8; j++) red[(kl * G + g) * D + vec * 8 + j] = acc[g][j];
    }
    __syncthreads();
    for (int i = tid; i < G * D; i += GQ_THREADS) {
        const int g = i / D, d = i - g * D;
        float o = 0.f;
        for (int l = 0; l < KL; l++) o += red[(l * G + g) * D + d];
        const int h = h0 + g;
        if (splits == 1) {
            out[((size_t)row * heads + h) * D + d] = o / run_l[g];
        } else {
            const size_t slot = ((size_t)blockIdx.x * heads + h) * gridDim.z + split;
            part_o[slot * D + d] = o;
            if (d == 0) {
                part_ml[2 * slot] = run_m[g];
                part_ml[2 * slot + 1] = run_l[g];
            }
        }
    }
}

// attention_merge_kernel combines a (row, head)'s split states (merge_split_states, common.cuh).
// depth is the attention launch's grid depth (the partials' stride); rows with one split were
// written by the attention kernel.
__global__ void attention_merge_kernel(float* out, const float* part_o, const float* part_ml, const int32_t* rows,
                                       const int32_t* positions, int heads, int D, int depth, int window, int split_chunk) {
    lp_pdl_launch_dependents();
    lp_pdl_wait();
    const int row = rows[blockIdx.x], h = blockIdx.y;
    const int splits = decode_range(positions[row], window, depth, split_chunk, 0).splits;
    if (splits == 1) return;
    merge_split_states(out + ((size_t)row * heads + h) * D, part_o, part_ml, ((size_t)blockIdx.x * heads + h) * depth,
                       splits, D);
}

extern "C" int lp_attention(float* out, const float* q, const uint16_t* kcache, const uint16_t* vcache,
                            const int32_t* positions, const int32_t* rows, const int32_t* row_seq,
                            const int32_t* seq_pages, const int32_t* page_table, int n, int heads, int kv_heads,
                            int head_dim, int page_size, int window, float scale, int splits, int split_chunk,
                            int kernel, float* scratch, int pdl, lp_stream s) {
    if (n == 0) return 0;
    if (n < 0 || heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 || !lp_head_dim_ok(head_dim) || page_size <= 0 ||
        scratch == nullptr || splits < 1 || splits > LP_DECODE_MAX_SPLITS || split_chunk < 1 ||
        (kernel != 0 && kernel != LP_ATTN_GROUPED && kernel != (LP_ATTN_GROUPED | LP_ATTN_PREFETCH_V)))
        return (int)cudaErrorInvalidValue;
    // scratch: [n][heads][splits][head_dim] outputs, then [n][heads][splits][2] (max, sum).
    float* part_o = scratch;
    float* part_ml = scratch + (size_t)n * heads * splits * head_dim;
    if (kernel & LP_ATTN_GROUPED) {
        if (!lp_attention_grouped_ok(heads, kv_heads, head_dim)) return (int)cudaErrorInvalidValue;
        const int prefetch_v = (kernel & LP_ATTN_PREFETCH_V) ? 1 : 0;
        dim3 grid(n, kv_heads, splits);
#define LP_GQ_LAUNCH(G)                                                                                            \
    lp_launch(attention_grouped_kernel<G>, grid, GQ_THREADS, 0, as_stream(s), pdl, out, part_o, part_ml, q, kcache, \
              vcache, positions, rows, row_seq, seq_pages, page_table, heads, kv_heads, head_dim, page_size, window,  \
              scale, split_chunk, prefetch_v)
        switch (heads / kv_heads) {
            case 1: LP_GQ_LAUNCH(1); break;
            case 2: LP_GQ_LAUNCH(2); break;
            case 3: LP_GQ_LAUNCH(3); break;
            case 4: LP_GQ_LAUNCH(4); break;
            case 5: LP_GQ_LAUNCH(5); break;
            case 6: LP_GQ_LAUNCH(6); break;
            case 7: LP_GQ_LAUNCH(7); break;
            case 8: LP_GQ_LAUNCH(8); break;
        }
#undef LP_GQ_LAUNCH
    } else {
        dim3 grid(n, heads, splits);
        lp_launch(attention_kernel, grid, 32 * DECODE_WARPS, 0, as_stream(s), pdl, out, part_o, part_ml, q, kcache, vcache,
                  positions, rows, row_seq, seq_pages, page_table, heads, kv_heads, head_dim, page_size, window, scale,
                  split_chunk);
    }
    if (splits > 1)
        lp_launch(attention_merge_kernel, dim3(n, heads), 128, 0, as_stream(s), pdl, out, part_o, part_ml, rows, positions,
                  heads, head_dim, splits, window, split_chunk);
    LP_CHECK_LAUNCH();
}

extern "C" size_t lp_attention_scratch_floats(int n, int heads, int head_dim, int splits) {
    return (size_t)n * heads * splits * (head_dim + 2);
}
