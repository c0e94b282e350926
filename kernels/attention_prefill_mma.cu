// Prefill attention on the tensor cores (FlashAttention-2 style, mma.sync m16n8k16 bf16, sm_80+),
// over the paged KV cache, for head dims 64, 80, 128 and 256 (lp_prefill_mma_ok); other head dims
// keep the CUDA-core kernel in attention_prefill.cu.
//
// One block of 4 warps per (query tile, head); a tile is up to LP_PREFILL_MMA_TILE (64)
// consecutive rows of one sequence, each warp owns 16 of them (one m16 row tile; the wide plan
// below gives each two). Q is converted from fp32 to bf16 once into shared memory (kept in
// registers as mma fragments where a warp's rows times D <= 16 x 128). The block walks
// the visible key range [max(0, first pos - window + 1), last pos] in tiles of BK keys; key and
// value rows are gathered through the block table with 16-byte cp.async copies, double-buffered
// so the next tile's copies overlap this tile's math. Per tile each warp computes S = Q Kᵀ
// (fp32 accumulators), masks (causal at each row's own position, so a chunk that continues a
// cached prefix attends to the earlier pages; sliding window per row), runs the online softmax
// in fp32 (base-2 exponent, scale folded in), rounds P to bf16 straight from the accumulator
// layout into A fragments (no shuffles) and adds P V. Rows are padded with 16-byte pitch per row
// so ldmatrix reads are free of bank conflicts. Tiles are launched latest first: under the
// causal mask they have the most keys, so the tail of the grid is the short work.
//
// Wide plan (LORAPLEX_PREFILL_WIDE, head dims lp_prefill_wide_ok: 64, 80, 128): tiles of
// LP_PREFILL_WIDE_TILE (128) rows, each warp 32 rows as two m16 tiles, so every K fragment and
// every V fragment a warp reads from shared memory (ldmatrix) feeds two mmas instead of one, the
// reuse FlashAttention-2 gets from its 128-row blocks. Why it pays: at D = 128 and 64-row tiles a
// warp issues 64 ldmatrix.x4 (32 KiB of shared-memory reads) per 128 mma of a key tile; at the
// H100's 128 bytes a clock per SM that is ~256 clocks of shared-memory bandwidth against ~200 of
// mma.sync issue, so the kernel is bound by shared memory (~101-124 TFLOP/s measured). Two row
// tiles a warp make it 80 ldmatrix (Q's fragments now reread from shared memory, 16 more) per 256
// mma: 1.25 instead of 2 clocks of shared memory an mma, leaving the tensor cores the bound. It
// also halves the K/V traffic from L2 per query row. What it costs: the accumulators (O 2 x 64,
// S 2 x 32 floats a lane) leave no room for Q in registers at D = 128 (hence the rereads), and
// the 102 KiB of shared memory (Q 128 rows, two stages of 64 K and V rows) allow two blocks an
// SM on an H100 (228 KiB), one on an A100 (164 KiB): a third K/V stage would cost the second block,
// whose warps already hide the copies of the first, so the pipeline stays two deep. Sharing one
// block among a GQA group's query heads would save the same L2 traffic but not the shared-memory
// reads per mma unless each warp again took two heads' rows, and it helps only GQA models; the
// taller tile does it for every head layout. The causal mask stays on the key tiles that cross a
// warp's rows (edge), a warp past the tile's last row skips the math. A short chunk's tile would
// leave most of its rows idle (and its warps twice the work of a 64-row tile's), so the host
// takes the plan only for steps with a chunk of 128 rows or more (cuda/backend.go,
// prefillTileRows); one tile plan a step, as the tiles are cut before the launch. Head dim 256
// keeps 64-row tiles (O alone would take 256 registers a lane). Split-K works the same over the
// taller tiles (part slots per tile row, tile_rows of them a tile).
//
// Split-K (flash-decoding for prefill tiles): a short chunk over a long cached prefix (40 rows
// after 2,000 cached positions) is one tile a head, too few blocks to fill the GPU, each walking
// every key. With splits > 1 the grid gains a depth: block (tile, head, z) walks only the z-th of
// `splits` contiguous runs of the tile's key tiles (key tiles [z·T/splits, (z+1)·T/splits), T
// the tile's key tile count: balanced, and empty only when T < splits) and writes each row's
// partial softmax state (its max in natural-log units, its normaliser, its unnormalised output)
// in attention.cu's layout: [tile row][head][split][D] outputs, then [tile row][head][split][2],
// tile row = tile · tile_rows + row (tile_rows: 64, or 128 in the wide plan). Rows of a tile see different keys (causal,
// window), so a split may be empty for some rows: those carry L = 0, which the merge skips. A
// second launch merges each row's states (merge_split_states in common.cuh, the decode merge's
// arithmetic). The host picks splits per step from the tile count, the heads and the longest key
// range (cuda/attention.go, prefillSplits; LORAPLEX_PREFILL_SPLIT); splits = 1 is the kernel as
// it was, writing normalised rows itself. The merge's traffic is (D + 2) fp32 per (row, head,
// split), written and read once: at 40 rows, 32 heads, D = 128 and 8 splits, 5.3 MB a layer.
//
// Determinism: no atomics, every reduction has a fixed order (keys in tile order; the row sum
// is kept per lane and reduced over the quad once at the end in a fixed xor pattern; splits
// merged in split order), so repeated runs and CUDA graph replays are bitwise identical. The
// split count changes the summation order, so a row's last bits depend on it (and through it on
// the step's tile count): the deterministic mode never takes this kernel (cuda/deterministic.go).
// The wide plan computes each row exactly as the 64-row plan does when no window or split cuts
// the keys differently: the key tiles start at 0 in both, a row meets them in the same order
// through the same mma and softmax arithmetic, and a key tile its warp computes but the row does
// not see is wholly masked, which leaves the row's state unchanged (factor exp2(0) = 1, P = 0);
// TestPrefillWideMatchesNarrow holds it to bitwise equality. With a window a tile's key tiles
// start at its first row's window edge, so the wide plan's rows may group keys differently.
// The kernel reads only its arguments and the step metadata, so a recorded launch replays
// correctly with new metadata (prefill steps are not recorded today, cuda/graph.go; were they,
// the split count, a launch dimension, would have to join the step key).
//
// Tolerance: the inputs K and V are already bf16 in the cache; the only roundings beyond fp32
// are Q (fp32 -> bf16, relative 2^-9 per element) and P (the probabilities, rounded to bf16
// before P V, relative 2^-9; the row sum adds the rounded values so the weights still sum to
// 1). Scores move by at most 2^-9·|q|·|k|·scale and each output by at most ~2^-8 of the largest
// |v| it averages; the tests hold the output to 1e-2 of the largest reference value
// (cuda/backend_test.go, TestPrefillAttentionSweep, which logs the worst it sees; split-K:
// TestPrefillSplitSweep; both over the 64-row and the wide plan). Split-K adds fp32 rescalings
// only (e^(M_z - M) in the merge); the wide plan adds no rounding.
#include <math.h>
#include "common.cuh"

#define MMA_WARPS 4

// MmaCfg is one instantiation's tile plan. MT is the m16 row tiles a warp owns: 1 for the
// LP_PREFILL_MMA_TILE (64) rows of the default plan, 2 for the LP_PREFILL_WIDE_TILE (128) rows of
// the wide one (LORAPLEX_PREFILL_WIDE, head dims lp_prefill_wide_ok).
template <int D, int MT>
struct MmaCfg {
    static constexpr int BQ = 16 * MT * MMA_WARPS;  // rows per tile
    static constexpr int BK = D > 128 ? 32 : 64;    // keys per tile: D = 256 keeps S and O in registers
    static constexpr int PITCH = D + 8;             // bf16 per shared row: 16-byte pad, conflict-free ldmatrix
    static constexpr int SMEM = (BQ + 4 * BK) * PITCH * 2;  // Q + two stages of K and V
    static constexpr bool QREG = D * MT <= 128;     // Q's A fragments held in registers (MT x D/16 x 4 a lane)
};
static_assert(MmaCfg<128, 1>::BQ == LP_PREFILL_MMA_TILE && MmaCfg<128, 2>::BQ == LP_PREFILL_WIDE_TILE,
              "tile rows of the C ABI");

template <int D, int MT>
__global__ void __launch_bounds__(32 * MMA_WARPS) attention_prefill_mma_kernel(
    float* out, float* part_o, float* part_ml, const float* q, const uint16_t* kc, const uint16_t* vc,
    const int32_t* positions, const int32_t* tiles, int num_tiles, const int32_t* seq_pages, const int32_t* page_table,
    int heads, int kv_heads, int page_size, int window, float scale_log2) {
    using Cfg = MmaCfg<D, MT>;
    constexpr int BQ = Cfg::BQ, BK = Cfg::BK, PITCH = Cfg::PITCH, KSTEPS = D / 16, NT_D = D / 8, NT_K = BK / 8;
    constexpr int WROWS = 16 * MT;  // rows a warp owns
    constexpr bool QREG = Cfg::QREG;
    extern __shared__ __align__(16) uint16_t sm[];
    uint16_t* qs = sm;                 // [BQ][PITCH]
    uint16_t* ks = qs + BQ * PITCH;    // [2][BK][PITCH]
    uint16_t* vs = ks + 2 * BK * PITCH;  // [2][BK][PITCH]

    const int tile = num_tiles - 1 - blockIdx.x;  // latest tiles (most keys) first
    const int start = tiles[3 * tile], n = tiles[3 * tile + 1], seq = tiles[3 * tile + 2];
    const int h = blockIdx.y, kvh = h / (heads / kv_heads), width = kv_heads * D;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, c = lane & 3;
    const int32_t* pages = page_table + seq_pages[seq];
    const int pos0 = positions[start];
    const int hi = pos0 + n - 1;
    const int lo = window > 0 ? max(0, pos0 - window + 1) : 0;
    const int key_tiles = (hi - lo + BK) / BK;
    // This block's run of key tiles (all of them unsplit; gridDim.z splits a tile's keys).
    const int split = blockIdx.z, splits = gridDim.z;
    const int it_begin = split * key_tiles / splits, it_end = (split + 1) * key_tiles / splits;

    auto load_kv = [&](int it) {
        const int t0 = lo + it * BK, stage = it & 1;
        uint16_t* kd = ks + stage * BK * PITCH;
        uint16_t* vd = vs + stage * BK * PITCH;
        constexpr int VECS = D / 8;  // 16-byte vectors per key row
        for (int v = tid; v < BK * VECS; v += 32 * MMA_WARPS) {
            const int k = v / VECS, cc = v - k * VECS, t = t0 + k;
            const bool ok = t <= hi;
            size_t off = 0;
            if (ok) off = ((size_t)pages[t / page_size] * page_size + t % page_size) * width + (size_t)kvh * D + 8 * cc;
            cp_async16(smem_u32(kd + k * PITCH + 8 * cc), kc + off, ok);
            cp_async16(smem_u32(vd + k * PITCH + 8 * cc), vc + off, ok);
        }
    };
    if (it_begin < it_end) load_kv(it_begin);
    cp_async_commit();

    for (int i = tid; i < BQ * (D / 4); i += 32 * MMA_WARPS) {
        const int r = i / (D / 4), c4 = i - r * (D / 4);
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (r < n) v = *reinterpret_cast<const float4*>(q + ((size_t)(start + r) * heads + h) * D + 4 * c4);
        *reinterpret_cast<uint2*>(qs + r * PITCH + 4 * c4) = make_uint2(pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
    }
    __syncthreads();
    // ldmatrix addresses: Q rows of each of this warp's m16 tiles (A operand), K rows (B, not
    // transposed), V rows (B, transposed); see the PTX ISA's m16n8k16 fragment layouts.
    uint32_t q_addr[MT];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) q_addr[mt] = smem_u32(qs + (warp * WROWS + mt * 16 + (lane & 15)) * PITCH + (lane >> 4) * 8);
    uint32_t qa[QREG ? MT : 1][QREG ? KSTEPS : 1][4];
    if constexpr (QREG) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) ldsm_x4(qa[mt][kk], q_addr[mt] + kk * 32);
    }

    float o[MT][NT_D][4];
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int d = 0; d < NT_D; d++) o[mt][d][0] = o[mt][d][1] = o[mt][d][2] = o[mt][d][3] = 0.f;
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.f;
    }
    const int wrow = pos0 + warp * WROWS;  // position of the warp's first row
    const bool warp_rows = warp * WROWS < n;  // a short tile leaves its last warps no rows

    for (int it = it_begin; it < it_end; it++) {
        if (it + 1 < it_end) load_kv(it + 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const int t0 = lo + it * BK;
        // Warp-uniform: skip a tile no row of this warp sees (past its last row, or before the
        // window of its first); mma and ldmatrix need the whole warp, so the test is per warp.
        const bool visible = warp_rows && t0 <= wrow + WROWS - 1 && !(window > 0 && t0 + BK - 1 < wrow - window + 1);
        if (visible) {
            const uint16_t* kt = ks + (it & 1) * BK * PITCH;
            const uint16_t* vt = vs + (it & 1) * BK * PITCH;
            float s[MT][NT_K][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int j = 0; j < NT_K; j++) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
            const uint32_t k_addr = smem_u32(kt + ((lane & 7) + ((lane >> 4) << 3)) * PITCH + ((lane >> 3) & 1) * 8);
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) {
                uint32_t a[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    if constexpr (QREG) {
                        a[mt][0] = qa[mt][kk][0], a[mt][1] = qa[mt][kk][1], a[mt][2] = qa[mt][kk][2], a[mt][3] = qa[mt][kk][3];
                    } else {
                        ldsm_x4(a[mt], q_addr[mt] + kk * 32);
                    }
                }
                // Each K fragment read from shared memory feeds the warp's MT row tiles.
#pragma unroll
                for (int j = 0; j < NT_K; j += 2) {
                    uint32_t b[4];
                    ldsm_x4(b, k_addr + (j * 8 * PITCH + kk * 16) * 2);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        mma_bf16(s[mt][j], a[mt], b[0], b[1]);
                        mma_bf16(s[mt][j + 1], a[mt], b[2], b[3]);
                    }
                }
            }
            // Mask only tiles that cross a row's causal edge or window edge.
            const bool edge = t0 + BK - 1 > wrow || (window > 0 && t0 < wrow + WROWS - 1 - window + 1);
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
#pragma unroll
                for (int j = 0; j < NT_K; j++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int t = t0 + j * 8 + 2 * c + (e & 1), pr = wrow + mt * 16 + g + 8 * (e >> 1);
                        const bool ok = !edge || (t <= pr && (window <= 0 || t > pr - window));
                        s[mt][j][e] = ok ? s[mt][j][e] * scale_log2 : -INFINITY;
                    }
                }
            }
            // P in bf16, laid out as the A fragments of P V: key tiles 2kk and 2kk+1 of S form
            // k-step kk. The row sums add the rounded values, the ones P V multiplies.
            uint32_t pa[MT][NT_K / 2][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                float mx[2] = {m[mt][0], m[mt][1]};
#pragma unroll
                for (int j = 0; j < NT_K; j++) {
                    mx[0] = fmaxf(mx[0], fmaxf(s[mt][j][0], s[mt][j][1]));
                    mx[1] = fmaxf(mx[1], fmaxf(s[mt][j][2], s[mt][j][3]));
                }
                float base[2], corr[2];
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
                    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
                    base[i] = mx[i] == -INFINITY ? 0.f : mx[i];  // a row with nothing visible yet stays at 0
                    corr[i] = exp2f(m[mt][i] - base[i]);
                    m[mt][i] = mx[i];
                    l[mt][i] *= corr[i];
                }
#pragma unroll
                for (int d = 0; d < NT_D; d++)
                    o[mt][d][0] *= corr[0], o[mt][d][1] *= corr[0], o[mt][d][2] *= corr[1], o[mt][d][3] *= corr[1];
#pragma unroll
                for (int j = 0; j < NT_K; j++) {
                    const uint32_t p01 = pack_bf16(exp2f(s[mt][j][0] - base[0]), exp2f(s[mt][j][1] - base[0]));
                    const uint32_t p23 = pack_bf16(exp2f(s[mt][j][2] - base[1]), exp2f(s[mt][j][3] - base[1]));
                    l[mt][0] += __uint_as_float(p01 << 16) + __uint_as_float(p01 & 0xffff0000u);
                    l[mt][1] += __uint_as_float(p23 << 16) + __uint_as_float(p23 & 0xffff0000u);
                    pa[mt][j / 2][(j & 1) * 2] = p01;
                    pa[mt][j / 2][(j & 1) * 2 + 1] = p23;
                }
            }
            const uint32_t v_addr = smem_u32(vt + ((lane & 7) + ((lane >> 3) & 1) * 8) * PITCH + (lane >> 4) * 8);
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
#pragma unroll
                for (int d = 0; d < NT_D; d += 2) {
                    uint32_t b[4];
                    ldsm_x4_trans(b, v_addr + (kk * 16 * PITCH + d * 8) * 2);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        mma_bf16(o[mt][d], pa[mt][kk], b[0], b[1]);
                        mma_bf16(o[mt][d + 1], pa[mt][kk], b[2], b[3]);
                    }
                }
            }
        }
        __syncthreads();  // the next iteration's copies overwrite this stage
    }

#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            l[mt][i] += __shfl_xor_sync(0xffffffffu, l[mt][i], 1);
            l[mt][i] += __shfl_xor_sync(0xffffffffu, l[mt][i], 2);
            const int r = warp * WROWS + mt * 16 + g + 8 * i;
            if (r >= n) continue;
            if (splits > 1) {
                // The split's state of row r (L = 0 and no visible key: empty); the merge normalises.
                const size_t slot = (((size_t)tile * BQ + r) * heads + h) * splits + split;
                if (c == 0) {
                    part_ml[2 * slot] = m[mt][i] * 0.6931471805599453f;  // log2 units -> natural log (the merge's e^x)
                    part_ml[2 * slot + 1] = l[mt][i];
                }
                float* po = part_o + slot * D + 2 * c;
#pragma unroll
                for (int d = 0; d < NT_D; d++)
                    *reinterpret_cast<float2*>(po + d * 8) = make_float2(o[mt][d][2 * i], o[mt][d][2 * i + 1]);
                continue;
            }
            const float inv = 1.f / l[mt][i];
            float* orow = out + ((size_t)(start + r) * heads + h) * D + 2 * c;
#pragma unroll
            for (int d = 0; d < NT_D; d++)
                *reinterpret_cast<float2*>(orow + d * 8) = make_float2(o[mt][d][2 * i] * inv, o[mt][d][2 * i + 1] * inv);
        }
    }
}

// prefill_merge_kernel: one block per (tile row, head) merges the row's split states; grid
// (num_tiles x tile_rows, heads), blocks past a tile's rows exit at once.
__global__ void prefill_merge_kernel(float* out, const float* part_o, const float* part_ml, const int32_t* tiles,
                                     int tile_rows, int heads, int D, int splits) {
    const int tile = blockIdx.x / tile_rows, r = blockIdx.x - tile * tile_rows, h = blockIdx.y;
    const int start = tiles[3 * tile], n = tiles[3 * tile + 1];
    if (r >= n) return;
    merge_split_states(out + ((size_t)(start + r) * heads + h) * D, part_o, part_ml,
                       (((size_t)tile * tile_rows + r) * heads + h) * splits, splits, D);
}

// PrefillLaunch holds one lp_attention_prefill_mma call's arguments once they are checked.
struct PrefillLaunch {
    float* out;
    float* part_o;
    float* part_ml;
    const float* q;
    const uint16_t* kc;
    const uint16_t* vc;
    const int32_t* positions;
    const int32_t* tiles;
    int num_tiles;
    const int32_t* seq_pages;
    const int32_t* page_table;
    int heads, kv_heads, page_size, window;
    float scale;
    int splits;
    cudaStream_t s;
};

template <int D, int MT>
static int launch_prefill_mma(const PrefillLaunch& a) {
    using Cfg = MmaCfg<D, MT>;
    constexpr int smem = Cfg::SMEM;
    // Set on every launch, not once per process: the attribute belongs to the current device (a
    // second backend on another GPU would otherwise launch over 48 KiB unconfigured and fail), and a
    // static flag would be a data race between engines. It is a host-side call, no sync.
    if (smem > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(attention_prefill_mma_kernel<D, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        if (e != cudaSuccess) return (int)e;
    }
    dim3 grid(a.num_tiles, a.heads, a.splits);
    attention_prefill_mma_kernel<D, MT><<<grid, 32 * MMA_WARPS, smem, a.s>>>(
        a.out, a.part_o, a.part_ml, a.q, a.kc, a.vc, a.positions, a.tiles, a.num_tiles, a.seq_pages, a.page_table,
        a.heads, a.kv_heads, a.page_size, a.window, a.scale * 1.4426950408889634f);
    if (a.splits > 1)
        prefill_merge_kernel<<<dim3(a.num_tiles * Cfg::BQ, a.heads), 128, 0, a.s>>>(a.out, a.part_o, a.part_ml, a.tiles, Cfg::BQ,
                                                                                   a.heads, D, a.splits);
    LP_CHECK_LAUNCH();
}

// launch_prefill_dim launches head dim D's kernel at the tile plan asked for; the wide plan is
// instantiated only for the head dims lp_prefill_wide_ok takes (the caller checked wide against it).
template <int D>
static int launch_prefill_dim(const PrefillLaunch& a, bool wide) {
    if constexpr (D <= 128) {
        if (wide) return launch_prefill_mma<D, 2>(a);
    }
    return launch_prefill_mma<D, 1>(a);
}

extern "C" int lp_attention_prefill_mma(float* out, const float* q, const uint16_t* kcache, const uint16_t* vcache,
                                        const int32_t* positions, const int32_t* tiles, int num_tiles, int tile_rows,
                                        const int32_t* seq_pages, const int32_t* page_table, int heads, int kv_heads,
                                        int head_dim, int page_size, int window, float scale, int splits,
                                        float* scratch, lp_stream s) {
    if (num_tiles <= 0) return 0;
    const bool wide = tile_rows == LP_PREFILL_WIDE_TILE;
    // float4 loads of q and 16-byte copies of cache rows need 16-byte aligned q and caches.
    if (heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 || !lp_prefill_mma_ok(head_dim) || page_size <= 0 ||
        (tile_rows != LP_PREFILL_MMA_TILE && !(wide && lp_prefill_wide_ok(head_dim))) ||
        (uintptr_t)q % 16 != 0 || (uintptr_t)kcache % 16 != 0 || (uintptr_t)vcache % 16 != 0 || splits < 1 ||
        splits > LP_PREFILL_MAX_SPLITS || (splits > 1 && scratch == nullptr))
        return (int)cudaErrorInvalidValue;
    // scratch: attention.cu's partial layout over the tiles' row slots (lp_attention_scratch_floats
    // of num_tiles x tile_rows rows).
    float* part_ml = splits > 1 ? scratch + (size_t)num_tiles * tile_rows * heads * splits * head_dim : nullptr;
    const PrefillLaunch a{out, scratch, part_ml, q, kcache, vcache, positions, tiles, num_tiles, seq_pages, page_table,
                          heads, kv_heads, page_size, window, scale, splits, as_stream(s)};
    switch (head_dim) {
        case 64:
            return launch_prefill_dim<64>(a, wide);
        case 80:
            return launch_prefill_dim<80>(a, wide);
        case 128:
            return launch_prefill_dim<128>(a, wide);
        default:
            return launch_prefill_dim<256>(a, wide);
    }
}
