// Batch-invariant products on the tensor cores (deterministic mode): y[n, m] = alpha · x[n, k] ·
// W[m, k]ᵀ (+ beta · y), x rounded to bf16 (round to nearest even, what the default path's
// lp_f32_to_bf16 does before cuBLAS; x comes in fp32 or already rounded), W bf16, fp32
// accumulate and output, with mma.sync m16n8k16 (sm_80+).
//
// Why: deterministic mode sends every product here (cuda/deterministic.go), and the CUDA-core
// kernel it had (lp_gemv_rows_bf16) reads the weights once per 8 rows, so batch-64 decode ran at
// 0.073 of the default (bench/results/gpu-goals-h100.md). Decode products are a weight stream;
// this kernel reads each weight once per GI_NC rows (64: a whole decode batch of up to 64
// rows) and does the multiplies on the tensor cores, so that the stream, not the arithmetic,
// bounds it.
//
// Layout: W is the mma's A operand (16 output columns per fragment) and x its B operand (8 rows
// per fragment), so a decode step of one row pads to 8, not 16. One block of 4 warps owns a
// strip of GI_BN (32) output columns and a chunk of GI_NC (64) rows: grid (row chunks, column
// strips), chunks fastest, so the chunks of one strip run side by side and share its weights in
// L2. 32 columns give 128 blocks at m = 4,096 (132 SMs) and 448 at 14,336. The block streams its
// W strip and its rows of x through shared memory in stages of GI_BK (64) k, GI_STAGES deep with
// 16-byte cp.async copies (x stays fp32 in shared memory; a lane converts the two pairs of its B
// fragment as it reads them). Warp w owns n-tiles 2w and 2w+1 (rows 16w..16w+15 of the chunk)
// for both 16-column A tiles; a warp whose n-tiles hold no row skips the arithmetic, and rows
// past n are staged as zeros only up to the end of their n-tile. Each block also reads its
// chunk of x from L2: in fp32 at 64 rows that is 4x its strip's weight bytes, so at batch 64 L2
// bandwidth rather than HBM may bound it. Hence two inputs, one result: x fp32 (rounded as the
// B fragments are built, no extra launch) or x already bf16 (lp_f32_to_bf16 once per product,
// the default path's copy: half the L2 bytes, B fragments by ldmatrix); the rounding is the
// same, so the outputs are bitwise the same. LORAPLEX_DETERMINISTIC_GEMM=tensor-cores or
// tensor-cores-bf16x picks one until a GPU run says which bound holds; GI_* are the knobs.
//
// lp_gemm_invariant_parts_bf16 runs the products of one x by up to LP_GEMV_PARTS matrices (q/k/v,
// gate/up) in one launch, the parts' strips one after the other in the grid: k and v alone
// (1,024 columns, 32 blocks) would leave 100 of 132 SMs idle, inside q's launch they ride its
// wave. A part's block does exactly what the plain launch's block for that strip does, so each
// part is bitwise what lp_gemm_invariant_bf16 gives it.
//
// The small-n variant (small = 1, n <= GS_ROWS = 8: decode at batch 1 to 8; cuda/deterministic.go's
// LORAPLEX_DETERMINISTIC_SMALL). At one row the block above streams W at about 1.06 TB/s on an
// H100 (batch-1 decode 70.9 tok/s against the default mode's 146-148): at m = 4,096 its 128
// blocks sit one per SM (two fit: 92 KB of shared memory each, sized for 64 rows of x), each
// with three 4-KB W stages ahead of the one computed, about 12 KB in flight per SM where HBM
// needs several times that at ~1 us of latency; and one warp of the four has arithmetic. This
// variant gives each block one warp and one A tile (GS_BN = 16 columns: 256 blocks at m = 4,096,
// two per SM) and GS_STAGES = 8 stages of GS_BK = 128 k (4 KB of W each), seven ahead: ~56 KB of
// W in flight per SM at m = 4,096 and three or four blocks per SM at larger m (69,632 bytes of
// shared memory with x in fp32, 52,224 in bf16: x is staged for 8 rows only). A lane reads its
// own B pairs (zeros for rows past n, which are never copied); the warp needs no other warp, so
// __syncthreads is a warp barrier.
//
// The wide and deep variants (n > GS_ROWS: decode at batch 9 to 64, prefill; cuda/deterministic.go's
// LORAPLEX_DETERMINISTIC_WIDE=on|deep; gi_variant). At batch 64 the big variant streamed about
// 0.8 TB/s of weights on an H100 (3,219 tok/s, 0.428 of the default mode's 7,517), with x in
// fp32 at 0.77 of its rate with x in bf16: by an estimate from the step times, about 3 TB/s of L2
// reads in both, most of them x, which every block of a 32-column strip reads whole (twice its
// strip's weight bytes in bf16). Both variants are the big variant's kernel body (one template,
// four warps, 64-row chunks, stages of GI_BK k, each warp two A tiles) with another block shape
// or pipeline. Wide: strips of GW_BN = 64 columns with the warps two by two (warp w: A tiles
// 2 (w % 2) and 2 (w % 2) + 1, n-tiles 4 (w / 2) .. 4 (w / 2) + 3), so a block's reads of x
// cover twice the weights (L2 reads per weight byte 2 instead of 3) and a k-step's ldmatrix
// reads per weight byte drop from 6 to 4, at the price of half the blocks (64 at m = 4,096: o
// and down leave half the SMs idle, and each busy one must stream twice as fast; one block per
// SM: GW_STAGES_BF16 = 12 stages of 18,432 bytes with bf16 x, eleven ahead, 88 KB of W in
// flight per SM against the big variant's 12 KB there). Deep: the big variant's blocks with
// GD_STAGES = 8 stages sized for x's type (13,824 bytes with bf16 x instead of the fp32-sized
// 23,040), seven 4-KB stages of W ahead instead of three, two blocks per SM with bf16 x where the
// grid has them. Which one streams faster is for a GPU run to say (bench/gpu's A/B rows of
// deterministic mode). A GPU that cannot give a block their shared memory runs the big variant.
//
// Batch invariance, by construction: output (r, j) is accumulated in one fp32 register, from
// zero, by one mma per k-step of 16, k-steps in increasing order 0 .. k/16 - 1, whose operands
// are W[j, 16s .. 16s + 15] (bf16, as stored) and bf16(x[r, 16s .. 16s + 15]); then alpha and
// beta are applied by the one expression below. None of that depends on n, on the chunk the row
// falls in or on its place in it: n only decides how many blocks there are and which warps have
// work. An mma computes each element of its 16x8 result from its own row of A, its own column
// of B and its own accumulator, in the same order for every element, so the other rows that
// share the tile (other requests, or the zeros past n) and the row's place in it do not change
// it (the bitwise tests hold the hardware to that). There is no split-K, no atomics, and the
// stage size only cuts the same sequence of k-steps into copies. TestBatchInvariantMatMul
// checks it bitwise: each row alone equals the row inside batches of many sizes, at any place.
//
// The launcher picks the variant by n (and the device's shared memory), and that keeps
// invariance: the sequence above is fixed by (r, j), k, W and x alone, not by which block
// computes the output, how many columns or rows a block holds, the stage size or depth or how
// many warps share a block; the small, wide and deep variants run exactly that sequence (the
// same mma.sync m16n8k16 per k-step, the same k order, the same operands, even at the same
// places: column j at A-tile row j % 16, since every strip width and a warp's first column are
// multiples of 16, and row r at B column r % 8; the same gi_store expression). So a row
// computed at n = 1 by the small variant is bitwise the row inside a 64-row batch computed by
// the big, wide or deep one. Which shapes are taken (lp_gemm_invariant_ok, the big variant's
// grid limit, which bounds the wide one's) never depends on n. Keep it so: a variant may change
// the block shape, never a k-step's instruction, order or operands, and never split k.
// TestGemmInvariant, TestBatchInvariantMatMul and TestInvariantMatMulShared compare them
// bitwise; the fragment and staging arithmetic of all three shapes of the kernel body was
// checked on a CPU emulation of cp.async's zero fill, ldmatrix x4 and mma m16n8k16 before any
// GPU ran it.
//
// Graph replay: the launch shape depends on n, k, the widths and variants only and the kernel reads
// only its arguments, so a recorded launch replays correctly; no reduction order varies between runs,
// so replays and direct runs are bitwise identical.
//
// Tolerance: the only rounding beyond fp32 is x to bf16 (relative 2^-9 per element), as on the
// default cuBLAS path; the products match the CPU's fp32 x · bf16 W within the 2e-2 of the
// largest value the other product tests use, and a float64 reference over the same bf16 inputs
// within fp32 summation error (TestGemmInvariant).
//
// Needs k % 16 == 0 (every supported model: 4,096, 14,336, ...), 16-byte aligned x and W, and
// m <= 65,535 strips of GI_BN (lp_gemm_invariant_ok); anything else returns
// cudaErrorInvalidValue, and cuda/ops.go, which checks the same in Go first, uses
// lp_gemv_rows_bf16 for it (a choice made by the shape alone, so still invariant).
#include "common.cuh"

#define GI_BN LP_GEMM_INVARIANT_COLS            // output columns (W rows) per block: two A tiles (32)
#define GI_NC 64                                // rows of x per block: eight n-tiles, two per warp
#define GI_BK 64                                // k per pipeline stage: four mma k-steps
#define GI_STAGES 4                             // stages in flight (three ahead of the one computed)
#define GI_WARPS 4
#define GI_WPITCH (GI_BK + 8)                   // bf16 per W row in shared memory: 16-byte pad, conflict-free ldmatrix
#define GI_XPITCH (GI_BK + 8)                   // floats per x row: rows 8 words apart, conflict-free 8-byte reads
#define GI_WBYTES (GI_BN * GI_WPITCH * 2)       // 4,608
#define GI_STAGE (GI_WBYTES + GI_NC * GI_XPITCH * 4)  // 23,040; 92,160 bytes of stages: two blocks per SM on an H100
#define GD_STAGES 8                             // the deep variant's stages in flight (seven ahead)
#define GW_BN 64                                // the wide variant's output columns per block: four A tiles
#define GW_STAGES_BF16 12                       // the wide variant's stages with bf16 x: 221,184 bytes
#define GW_STAGES_F32 8                         // ... with fp32 x: 221,184 bytes

#define GS_ROWS LP_GEMM_INVARIANT_SMALL_ROWS    // the small-n variant: rows it takes (one n-tile, 8)
#define GS_BN 16                                // output columns per block: one A tile, one warp
#define GS_BK 128                               // k per stage: eight mma k-steps
#define GS_STAGES 8                             // stages in flight (seven ahead of the one computed)
#define GS_WPITCH (GS_BK + 8)                   // bf16 per W row: 272 bytes, conflict-free ldmatrix
#define GS_XPITCH (GS_BK + 8)                   // elements per x row (fp32 or bf16): conflict-free B reads
#define GS_WBYTES (GS_BN * GS_WPITCH * 2)       // 4,352: 69,632 bytes of stages with fp32 x, 52,224 with bf16

static_assert(GS_ROWS == 8 && GS_BN == 16, "the small variant holds one n-tile and one A tile");
static_assert(GS_BK % 16 == 0 && GS_WBYTES % 16 == 0 && (GS_XPITCH * 2) % 16 == 0, "16-byte aligned stages and rows");
static_assert(GI_BN % GS_BN == 0 && GW_BN % GS_BN == 0, "strips are whole small-variant strips: A tiles at the same j % 16");
static_assert(GI_BN == 2 * 16 && GW_BN == 4 * 16 && GI_NC == 8 * 8 && GI_WARPS == 4, "the warp layouts of gi_variant");
static_assert(GI_BK % 16 == 0 && GI_WBYTES % 16 == 0 && GI_STAGE % 16 == 0, "16-byte aligned stages");
static_assert((GI_WPITCH * 2) % 16 == 0 && (GI_XPITCH * 4) % 16 == 0, "16-byte aligned rows in every variant's stages");

// The variants of gemm_invariant_kernel: the same k-tiles of GI_BK, the same GI_NC-row chunks, the
// same four warps, each warp holding two A tiles (32 columns) and NT n-tiles (8 NT rows).
enum { GI_BIG = 0, GI_DEEP = 1, GI_WIDE = 2 };

// gi_variant is variant V's block shape and pipeline with x of type X. GI_BIG: strips of 32
// columns, each warp 16 rows, GI_STAGES stages of GI_STAGE bytes (x's area sized for fp32
// whatever X is, as it has always been). GI_DEEP: the same blocks, GD_STAGES stages sized for X
// (13,824 bytes with bf16 x: 110,592 in all, two blocks per SM on an H100, one on an A100;
// 23,040 with fp32: 184,320). GI_WIDE: strips of 64 columns, warps two by two (warp w: A tiles
// 2 (w % 2) and 2 (w % 2) + 1, rows 32 (w / 2) ..), stages sized for X (18,432 bytes with bf16
// x, 27,648 with fp32), 221,184 bytes in all: one block per SM on an H100.
template <typename X, int V>
struct gi_variant {
    static constexpr int BN = V == GI_WIDE ? GW_BN : GI_BN;  // output columns per block
    static constexpr int WA = BN / 32;                       // warps across the strip (two A tiles each)
    static constexpr int NT = GI_NC / 8 * WA / GI_WARPS;     // n-tiles per warp
    static constexpr int XPITCH = sizeof(X) == 2 ? GI_WPITCH : GI_XPITCH;  // elements per x row
    static constexpr int WBYTES = BN * GI_WPITCH * 2;
    static constexpr int STAGE = V == GI_BIG ? GI_STAGE : WBYTES + GI_NC * XPITCH * (int)sizeof(X);
    static constexpr int STAGES = V == GI_BIG    ? GI_STAGES
                                  : V == GI_DEEP ? GD_STAGES
                                                 : (sizeof(X) == 2 ? GW_STAGES_BF16 : GW_STAGES_F32);
    static constexpr int SMEM = STAGES * STAGE;
    static_assert(NT % 2 == 0 && GI_WARPS / WA * NT * 8 == GI_NC, "the warps cover the chunk in pairs of n-tiles");
    static_assert(WBYTES % 16 == 0 && STAGE % 16 == 0 && SMEM <= 232448, "16-byte aligned stages within 227 KB");
};

// gi_strips is how many strips of cols columns part g of p has.
__host__ __device__ __forceinline__ int gi_strips(const lp_gemv_parts& p, int g, int cols) {
    return (p.end[g] - (g > 0 ? p.end[g - 1] : 0) + cols - 1) / cols;
}

// gi_part is the part that grid strip s (of cols columns each, the parts' strips one part after
// the other) falls in; first is set to that part's first strip.
__device__ __forceinline__ int gi_part(const lp_gemv_parts& p, int s, int cols, int& first) {
    int part = 0;
    first = 0;
    while (part + 1 < p.parts && s >= first + gi_strips(p, part, cols)) {
        first += gi_strips(p, part, cols);
        part++;
    }
    return part;
}

// gi_store writes output (r, j) from its accumulator: the one expression both variants apply.
__device__ __forceinline__ void gi_store(float* out, float acc, float alpha, float beta) {
    *out = beta != 0.f ? alpha * acc + beta * *out : alpha * acc;
}

// Part g of p is y[g] = alpha · x · w[g]ᵀ (+ beta · y[g]), its width end[g] - end[g-1]; the
// grid's strips are the parts' strips one part after the other (one part: a plain product).
// X is x's element type: float (rounded to bf16 as the B fragments are built) or uint16_t (bf16
// already, rounded the same way by lp_f32_to_bf16; B fragments straight from ldmatrix). V is the
// variant (gi_variant): which block computes an output and how deep the pipeline is, never the
// output's mma sequence.
template <typename X, int V>
__global__ void __launch_bounds__(32 * GI_WARPS)
    gemm_invariant_kernel(lp_gemv_parts p, const X* x, int n, int k, float alpha, float beta) {
    using G = gi_variant<X, V>;
    constexpr bool XBF16 = sizeof(X) == 2;
    constexpr int XPITCH = G::XPITCH, NT = G::NT;
    extern __shared__ __align__(16) unsigned char gi_sm[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, c = lane & 3;
    int first;  // the first strip of the part this block's strip falls in
    const int part = gi_part(p, blockIdx.y, G::BN, first);
    const uint16_t* w = p.w[part];
    float* y = p.y[part];
    const int m = p.end[part] - (part > 0 ? p.end[part - 1] : 0);
    const int r0 = blockIdx.x * GI_NC;                 // the chunk's first row of x
    const int j0 = ((int)blockIdx.y - first) * G::BN;  // the strip's first output column in its part
    const int rows = min(GI_NC, n - r0);
    const int staged = (rows + 7) & ~7;  // rows copied per stage: whole n-tiles, zeros past n
    const int ktiles = (k + GI_BK - 1) / GI_BK;

    auto wstage = [&](int st) { return reinterpret_cast<uint16_t*>(gi_sm + st * G::STAGE); };
    auto xstage = [&](int st) { return reinterpret_cast<X*>(gi_sm + st * G::STAGE + G::WBYTES); };
    // Copies of k-tile it: W rows past m and columns past k, and x rows past n, are zero-filled
    // (source size 0 reads nothing; the pointer only has to be valid).
    auto load = [&](int it) {
        const int k0 = it * GI_BK, st = it % G::STAGES;
        uint16_t* wd = wstage(st);
        X* xd = xstage(st);
        constexpr int WV = GI_BK / 8;  // 16-byte vectors per W row
        for (int v = tid; v < G::BN * WV; v += 32 * GI_WARPS) {
            const int r = v / WV, kc = k0 + 8 * (v - r * WV);
            const bool ok = j0 + r < m && kc < k;
            cp_async16(smem_u32(wd + r * GI_WPITCH + (kc - k0)), ok ? w + (size_t)(j0 + r) * k + kc : w, ok);
        }
        constexpr int XE = 16 / sizeof(X), XV = GI_BK / XE;  // elements per 16-byte vector, vectors per x row
        for (int v = tid; v < staged * XV; v += 32 * GI_WARPS) {
            const int r = v / XV, kc = k0 + XE * (v - r * XV);
            const bool ok = r < rows && kc < k;
            cp_async16(smem_u32(xd + r * XPITCH + (kc - k0)), ok ? x + (size_t)(r0 + r) * k + kc : x, ok);
        }
    };

#pragma unroll
    for (int s = 0; s < G::STAGES - 1; s++) {
        if (s < ktiles) load(s);
        cp_async_commit();
    }

    // acc[a][t]: the 16x8 result of the warp's A tile a (columns j0 + wcol + 16a ..) and its
    // n-tile t (rows r0 + wrow + 8t ..), in the m16n8k16 C layout: elements 0, 1 at column g,
    // rows 2c and 2c + 1 of the n-tile; 2, 3 at column g + 8.
    float acc[2][NT][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[a][t][0] = acc[a][t][1] = acc[a][t][2] = acc[a][t][3] = 0.f;
    const int wcol = 32 * (warp % G::WA);       // the warp's first column in the strip
    const int wrow = 8 * NT * (warp / G::WA);   // the warp's first row in the chunk
    // The warp's n-tiles that hold rows (warp-uniform: mma needs all lanes); none: no arithmetic.
    const int live = min(NT, max(0, rows - wrow + 7) / 8);

    for (int it = 0; it < ktiles; it++) {
        cp_async_wait<G::STAGES - 2>();  // k-tile it has landed (this thread's copies) ...
        __syncthreads();                 // ... everyone's, and everyone is done with k-tile it - 1
        if (it + G::STAGES - 1 < ktiles) load(it + G::STAGES - 1);  // into k-tile it - 1's stage
        cp_async_commit();
        if (live == 0) continue;
        const uint16_t* wt = wstage(it % G::STAGES);
        const X* xt = xstage(it % G::STAGES);
        const int ksteps = min(GI_BK, k - it * GI_BK) / 16;
        // ldmatrix x4 of a 16x16 A tile: lanes 0-15 address its rows at k 0, lanes 16-31 at k 8;
        // registers 0-3 are then a0..a3 of the m16n8k16 A layout (rows g, g + 8; k 2c, 2c + 8).
        const uint32_t a_addr = smem_u32(wt + (wcol + (lane & 15)) * GI_WPITCH + (lane >> 4) * 8);
        // B fragment of n-tile t: b0 = x[row g][k 2c, 2c + 1], b1 = x[row g][k 2c + 8, 2c + 9].
        // fp32 x: each lane reads its pairs (rows 8 words apart: no bank conflicts) and rounds
        // them. bf16 x: one ldmatrix x4 gives a pair of n-tiles, lanes 0-7 addressing the first
        // one's rows at k 0, 8-15 at k 8, 16-31 the second's the same way (attention_prefill_mma.cu's
        // K operand): registers b0, b1 of n-tile 2h, then of n-tile 2h + 1.
        const X* xr = XBF16 ? xt + (wrow + (lane & 7) + ((lane >> 4) << 3)) * XPITCH + ((lane >> 3) & 1) * 8
                            : xt + (wrow + g) * XPITCH + 2 * c;
        // Guards, not breaks, so that every loop unrolls with constant trip counts and the
        // fragments and accumulators stay in registers.
#pragma unroll
        for (int kk = 0; kk < GI_BK / 16; kk++) {
            if (kk < ksteps) {
                uint32_t a0[4], a1[4];
                ldsm_x4(a0, a_addr + kk * 32);
                ldsm_x4(a1, a_addr + (16 * GI_WPITCH + kk * 16) * 2);
                uint32_t b[NT][2];  // [n-tile][b0, b1]
#pragma unroll
                for (int h = 0; h < NT / 2; h++) {
                    if (2 * h < live) {
                        if constexpr (XBF16) {
                            ldsm_x4(&b[2 * h][0], smem_u32(xr + 16 * h * XPITCH + kk * 16));
                        } else {
#pragma unroll
                            for (int t = 2 * h; t < 2 * h + 2; t++) {
                                if (t < live) {
                                    const float* q = reinterpret_cast<const float*>(xr) + t * 8 * XPITCH + kk * 16;
                                    const float2 lo = *reinterpret_cast<const float2*>(q);
                                    const float2 hi = *reinterpret_cast<const float2*>(q + 8);
                                    b[t][0] = pack_bf16(lo.x, lo.y), b[t][1] = pack_bf16(hi.x, hi.y);
                                }
                            }
                        }
                    }
                }
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    if (t < live) {
                        mma_bf16(acc[0][t], a0, b[t][0], b[t][1]);
                        mma_bf16(acc[1][t], a1, b[t][0], b[t][1]);
                    }
                }
            }
        }
    }

#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = wrow + 8 * t + 2 * c + (e & 1);
                const int j = j0 + wcol + 16 * a + g + 8 * (e >> 1);
                if (r < rows && j < m) gi_store(y + (size_t)(r0 + r) * m + j, acc[a][t][e], alpha, beta);
            }
}

// The small-n variant: one n-tile of rows (n <= GS_ROWS), one warp per block owning one A tile
// (GS_BN = 16 output columns), GS_STAGES stages of GS_BK k each. The same mma sequence per
// output as gemm_invariant_kernel (one fp32 accumulator from zero, k-steps in increasing order,
// the same operands, output column j at A-tile row j % 16 and row r at B column r in both), so
// bitwise the same outputs; only which block computes an output, and how many bytes of W are in
// flight, differ. X as gemm_invariant_kernel's.
template <typename X>
__global__ void __launch_bounds__(32)
    gemm_invariant_small_kernel(lp_gemv_parts p, const X* x, int n, int k, float alpha, float beta) {
    constexpr bool XBF16 = sizeof(X) == 2;
    constexpr int STAGE = GS_WBYTES + GS_ROWS * GS_XPITCH * (int)sizeof(X);
    extern __shared__ __align__(16) unsigned char gi_sm[];
    const int lane = threadIdx.x, g = lane >> 2, c = lane & 3;
    int first;  // the first strip of the part this block's strip falls in
    const int part = gi_part(p, blockIdx.x, GS_BN, first);
    const uint16_t* w = p.w[part];
    float* y = p.y[part];
    const int m = p.end[part] - (part > 0 ? p.end[part - 1] : 0);
    const int j0 = ((int)blockIdx.x - first) * GS_BN;  // the strip's first output column in its part
    const int ktiles = (k + GS_BK - 1) / GS_BK;

    auto wstage = [&](int st) { return reinterpret_cast<uint16_t*>(gi_sm + st * STAGE); };
    auto xstage = [&](int st) { return reinterpret_cast<X*>(gi_sm + st * STAGE + GS_WBYTES); };
    // Copies of k-tile it, as gemm_invariant_kernel's, for the n rows of x only: rows past n are
    // never read (their lanes' B fragments are zeros, as the big variant's zero rows give).
    auto load = [&](int it) {
        const int k0 = it * GS_BK, st = it % GS_STAGES;
        uint16_t* wd = wstage(st);
        X* xd = xstage(st);
        constexpr int WV = GS_BK / 8;  // 16-byte vectors per W row
#pragma unroll
        for (int v = lane; v < GS_BN * WV; v += 32) {
            const int r = v / WV, kc = k0 + 8 * (v - r * WV);
            const bool ok = j0 + r < m && kc < k;
            cp_async16(smem_u32(wd + r * GS_WPITCH + (kc - k0)), ok ? w + (size_t)(j0 + r) * k + kc : w, ok);
        }
        constexpr int XE = 16 / sizeof(X), XV = GS_BK / XE;  // elements per 16-byte vector, vectors per x row
        for (int v = lane; v < n * XV; v += 32) {
            const int r = v / XV, kc = k0 + XE * (v - r * XV);
            const bool ok = kc < k;
            cp_async16(smem_u32(xd + r * GS_XPITCH + (kc - k0)), ok ? x + (size_t)r * k + kc : x, ok);
        }
    };

#pragma unroll
    for (int s = 0; s < GS_STAGES - 1; s++) {
        if (s < ktiles) load(s);
        cp_async_commit();
    }

    // acc: the 16x8 result of the block's A tile (columns j0 ..) and the n-tile (rows 0 .. 7), in
    // the m16n8k16 C layout: elements 0, 1 at column g, rows 2c and 2c + 1; 2, 3 at column g + 8.
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    const bool live = g < n;  // the lane's B column is a row of x (else its fragment is zeros)
    for (int it = 0; it < ktiles; it++) {
        cp_async_wait<GS_STAGES - 2>();  // k-tile it has landed (this thread's copies) ...
        __syncthreads();                 // ... every lane's, and every lane is done with k-tile it - 1
        if (it + GS_STAGES - 1 < ktiles) load(it + GS_STAGES - 1);  // into k-tile it - 1's stage
        cp_async_commit();
        const uint16_t* wt = wstage(it % GS_STAGES);
        const X* xr = xstage(it % GS_STAGES) + g * GS_XPITCH + 2 * c;
        const int ksteps = min(GS_BK, k - it * GS_BK) / 16;
        // A as gemm_invariant_kernel loads it (ldmatrix x4: lanes 0-15 address rows at k 0,
        // 16-31 at k 8). B: b0 = x[row g][k 2c, 2c + 1], b1 = x[row g][k 2c + 8, 2c + 9], read
        // by each lane itself (the values the big variant's ldmatrix or float2 reads give; x
        // rows GS_XPITCH elements apart put the 32 lanes in 32 banks in both forms).
        const uint32_t a_addr = smem_u32(wt + (lane & 15) * GS_WPITCH + (lane >> 4) * 8);
#pragma unroll
        for (int kk = 0; kk < GS_BK / 16; kk++) {
            if (kk >= ksteps) break;
            uint32_t a[4];
            ldsm_x4(a, a_addr + kk * 32);
            uint32_t b0 = 0, b1 = 0;
            if (live) {
                if constexpr (XBF16) {
                    b0 = *reinterpret_cast<const uint32_t*>(xr + kk * 16);
                    b1 = *reinterpret_cast<const uint32_t*>(xr + kk * 16 + 8);
                } else {
                    const float2 lo = *reinterpret_cast<const float2*>(xr + kk * 16);
                    const float2 hi = *reinterpret_cast<const float2*>(xr + kk * 16 + 8);
                    b0 = pack_bf16(lo.x, lo.y), b1 = pack_bf16(hi.x, hi.y);
                }
            }
            mma_bf16(acc, a, b0, b1);
        }
    }

#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int r = 2 * c + (e & 1), j = j0 + g + 8 * (e >> 1);
        if (r < n && j < m) gi_store(y + (size_t)r * m + j, acc[e], alpha, beta);
    }
}

// gs_smem is the small variant's shared memory for x of type X: GS_STAGES stages of W and x.
template <typename X>
constexpr int gs_smem() {
    return GS_STAGES * (GS_WBYTES + GS_ROWS * GS_XPITCH * (int)sizeof(X));
}

// launch_gemm_invariant_variant launches variant V of gemm_invariant_kernel on p (checked by
// launch_gemm_invariant): the refusal of V's shared memory, or cudaSuccess once launched (the
// launch's own status is then the caller's cudaGetLastError).
template <typename X, int V>
static cudaError_t launch_gemm_invariant_variant(int n, int k, const X* x, const lp_gemv_parts& p, float alpha, float beta,
                                                 lp_stream s) {
    using G = gi_variant<X, V>;
    cudaError_t e = cudaFuncSetAttribute(gemm_invariant_kernel<X, V>, cudaFuncAttributeMaxDynamicSharedMemorySize, G::SMEM);
    if (e != cudaSuccess) return e;
    int strips = 0;
    for (int g = 0; g < p.parts; g++) strips += gi_strips(p, g, G::BN);
    dim3 grid((n + GI_NC - 1) / GI_NC, strips);
    gemm_invariant_kernel<X, V><<<grid, 32 * GI_WARPS, G::SMEM, as_stream(s)>>>(p, x, n, k, alpha, beta);
    return cudaSuccess;
}

template <typename X>
static int launch_gemm_invariant(int n, int k, const X* x, const lp_gemv_parts& p, float alpha, float beta, int variants,
                                 lp_stream s) {
    if (n < 1 || k <= 0 || !x || (uintptr_t)x % 16 != 0 || p.parts < 1 || p.parts > LP_GEMV_PARTS)
        return (int)cudaErrorInvalidValue;
    int strips = 0, small_strips = 0;
    for (int g = 0; g < p.parts; g++) {
        if (!lp_gemm_invariant_ok(p.end[g] - (g > 0 ? p.end[g - 1] : 0), k) || !p.w[g] || p.wsrc[g] || p.wtab[g] || !p.y[g] ||
            (uintptr_t)p.w[g] % 16 != 0)
            return (int)cudaErrorInvalidValue;
        strips += gi_strips(p, g, GI_BN);
        small_strips += gi_strips(p, g, GS_BN);
    }
    // The shapes taken do not depend on n (the big variant's grid limit for every variant), so a
    // row alone and the same row in a batch are both taken or both refused.
    if (strips > 65535) return (int)cudaErrorInvalidValue;
    // Set on every launch, as attention_prefill_mma.cu does: the attribute belongs to the current
    // device, and a host-side call costs no sync. The variant is chosen by n (and the device's
    // shared memory) only: the same mma sequence per output whichever runs.
    if ((variants & LP_GEMM_INVARIANT_SMALL) && n <= GS_ROWS) {
        cudaError_t e = cudaFuncSetAttribute(gemm_invariant_small_kernel<X>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             gs_smem<X>());
        if (e != cudaSuccess) return (int)e;
        gemm_invariant_small_kernel<X><<<small_strips, 32, gs_smem<X>(), as_stream(s)>>>(p, x, n, k, alpha, beta);
        LP_CHECK_LAUNCH();
    }
    // A device that cannot give a block a variant's shared memory (the wide variant, or the deep
    // one with fp32 x, on an A100's 163 KB; either on a GPU with 99 KB) runs the big variant:
    // bitwise the same products. The refusal is cleared so that the launch reports its own status.
    if ((variants & LP_GEMM_INVARIANT_WIDE) && n > GS_ROWS) {
        if (launch_gemm_invariant_variant<X, GI_WIDE>(n, k, x, p, alpha, beta, s) == cudaSuccess) LP_CHECK_LAUNCH();
        (void)cudaGetLastError();
    } else if ((variants & LP_GEMM_INVARIANT_DEEP) && n > GS_ROWS) {
        if (launch_gemm_invariant_variant<X, GI_DEEP>(n, k, x, p, alpha, beta, s) == cudaSuccess) LP_CHECK_LAUNCH();
        (void)cudaGetLastError();
    }
    cudaError_t e = launch_gemm_invariant_variant<X, GI_BIG>(n, k, x, p, alpha, beta, s);
    if (e != cudaSuccess) return (int)e;
    LP_CHECK_LAUNCH();
}

static int launch_gemm_invariant_x(int n, int k, const void* x, int x_bf16, const lp_gemv_parts& p, float alpha,
                                   float beta, int variants, lp_stream s) {
    return x_bf16 ? launch_gemm_invariant(n, k, static_cast<const uint16_t*>(x), p, alpha, beta, variants, s)
                  : launch_gemm_invariant(n, k, static_cast<const float*>(x), p, alpha, beta, variants, s);
}

extern "C" int lp_gemm_invariant_bf16(int n, int m, int k, const void* x, int x_bf16, const uint16_t* w, float* y,
                                      float alpha, float beta, int variants, lp_stream s) {
    lp_gemv_parts p = {};
    p.w[0] = w, p.y[0] = y, p.end[0] = m, p.parts = 1;
    return launch_gemm_invariant_x(n, k, x, x_bf16, p, alpha, beta, variants, s);
}

extern "C" int lp_gemm_invariant_parts_bf16(int n, int k, const void* x, int x_bf16, lp_gemv_parts parts, int variants,
                                            lp_stream s) {
    return launch_gemm_invariant_x(n, k, x, x_bf16, parts, 1.f, 0.f, variants, s);
}
