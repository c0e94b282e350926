// Skinny GEMM for decode: y[n, m] = alpha · x[n, k] · W[m, k]ᵀ (+ beta · y) for n <= 8 rows.
//
// Decode is a weight stream: every weight is read once per step and used n times. cuBLAS
// GEMM tiles are built for large n and reach a fraction of HBM bandwidth at n = 1; here one
// warp owns one output column, lanes read its weight row in 16-byte vectors (8 bf16), and each
// weight vector is multiplied with all n rows of x (fp32, small enough to stay in L1/L2). No
// conversion of x to bf16 is needed either.
#include "common.cuh"

#define GEMV_WARPS 8

// Launch options (opts, LP_GEMV_* in loraplex_kernels.h). Programmatic dependent launch
// (LP_GEMV_PDL, common.cuh): the batch-1 kernels below stream a lane's weight vectors through
// gemv_stream / gemv_stream_pair, which issue the first loads before lp_pdl_wait (weights are
// never written by a kernel) and hand every vector to the caller's step after it, where x,
// delta and every output are touched. A warp with no column waits before it exits. The order
// of the sums is the loops' of before, so the results are bitwise the same with or without
// PDL. The steps are structs with force-inlined operators (not lambdas, which the inliner may
// leave as calls) so the accumulators they update by reference stay in registers.
//
// LP_GEMV_PREFETCH (LORAPLEX_PDL=prefetch, for weights the caller knows fit in L2) also has
// every warp ask L2 for the rest of its rows (prefetch.global.L2, one 128-byte line a lane at
// a time) before it waits. A GEMV waiting for a kernel that leaves HBM idle (the o projection
// behind decode attention at short contexts: 32 MiB of weights behind ~15 µs of attention in
// the Llama-3-8B shape) then streams its weights from L2. The prefetches are hints: they
// change no value, and without the wait to hide behind (no LP_GEMV_PDL) they are not issued.
//
// LP_GEMV_DEEP (LORAPLEX_GEMV_DEEP, one row only) doubles the loads in flight per lane (D = 8
// vectors of a row, 4 of each of gate and up): the batch-1 GEMVs reached 0.91 of copy
// bandwidth with 4 (bench/results/gpu-h100/goals-2026-12-07-ab2, breakdown.txt), and a
// launch's first and last warps stream with little else in flight beside them. It only
// deepens the pipeline (at the price of 16 registers a thread, so fewer blocks an SM): each
// lane still sums its vectors in the same order, so the results are bitwise the same.
//
// Not taken: the batch-1 parts and gate/up launches compiled under __launch_bounds__ for 6 and 4
// resident blocks an SM (the norm-fused q/k/v launch takes 67 registers, so 3 blocks and 1.94
// waves). Capped at 40 registers it ran 2.4x slower on an H100 (95 us against 40 a layer in
// Nsight Compute) and batch-1 decode fell to 0.75x (bench/results/gpu-h100/goals-2026-12-07-s24a):
// the deep weight pipeline needs its registers more than the SM needs more blocks.

// gemv_opts reads a launcher's opts: the pdl argument of lp_launch, how the kernels load weights
// (ld: GEMV_LD_L2, prefetch into L2, only under PDL; GEMV_LD_STREAM, gemv_load), whether one-row
// launches take the deep variant, whether norm-fused one-row launches stage their input (and
// whether a staged parts launch gives a warp two columns).
enum { GEMV_LD_L2 = 1, GEMV_LD_STREAM = 2 };
struct gemv_opts {
    int pdl, ld;
    bool deep, stage, pair;
    explicit gemv_opts(int opts)
        : pdl(opts & LP_GEMV_PDL),
          ld(((opts & LP_GEMV_PDL) && (opts & LP_GEMV_PREFETCH) ? GEMV_LD_L2 : 0) | (opts & LP_GEMV_STREAM ? GEMV_LD_STREAM : 0)),
          deep(opts & LP_GEMV_DEEP),
          stage(opts & LP_GEMV_STAGE),
          pair(opts & LP_GEMV_STAGE_PAIR) {}
};

// gemv_load is one 16-byte weight load; ld & GEMV_LD_STREAM (LP_GEMV_STREAM) makes it a load that
// does not allocate in L1 (ld.global.nc.L1::no_allocate), so the weight stream, read once per
// step, does not evict from L1 the rows of x every weight vector is multiplied with (at one row
// a warp reads twice as many bytes of x as of W: from L1 while they stay there, else from L2).
// The value loaded is the same, so the results are bitwise the same.
__device__ __forceinline__ uint4 gemv_load(const uint4* p, int ld) {
    if (ld & GEMV_LD_STREAM) {
        uint4 v;
        asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
            : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
            : "l"(p));
        return v;
    }
    return *p;
}

// gemv_prefetch_l2 asks L2 for the bytes [from, bytes) of a weight row, lanes taking 128-byte
// lines in turn.
__device__ __forceinline__ void gemv_prefetch_l2(const uint4* row, int from, int bytes) {
    const char* p = reinterpret_cast<const char*>(row);
    for (int o = from + (threadIdx.x & 31) * 128; o < bytes; o += 32 * 128)
        asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p + o));
}

// gemv_stream hands step(v, iv) a lane's 16-byte vectors of one weight row: vectors lane,
// lane + 32, ... in increasing order, D loads in flight per lane (a warp streaming one row needs
// that much memory-level parallelism to approach HBM bandwidth; 4 by default, 8 with
// LP_GEMV_DEEP), the first D issued before the wait on the previous kernel; ld & GEMV_LD_L2: the rest of the
// row is prefetched into L2 then too. D changes how many loads are in flight, not the order in
// which step sees the vectors, so the sums are bitwise the same for every D.
template <int D, typename Step>
__device__ __forceinline__ void gemv_stream(const uint4* wr, int vecs, int ld, const Step& step) {
    int i = threadIdx.x & 31;
    uint4 v[D];
    bool more = i + 32 * (D - 1) < vecs;
    if (more) {
#pragma unroll
        for (int u = 0; u < D; u++) v[u] = gemv_load(wr + i + 32 * u, ld);
    }
    if (ld & GEMV_LD_L2) gemv_prefetch_l2(wr, 32 * D * 16, vecs * 16);
    lp_pdl_wait();
    while (more) {
#pragma unroll
        for (int u = 0; u < D; u++) step(v[u], i + 32 * u);
        i += 32 * D;
        more = i + 32 * (D - 1) < vecs;
        if (more) {
#pragma unroll
            for (int u = 0; u < D; u++) v[u] = gemv_load(wr + i + 32 * u, ld);
        }
    }
    for (; i < vecs; i += 32) step(gemv_load(wr + i, ld), i);
}

// gemv_stream_pair is gemv_stream over two rows of the same width (gate and up): step(g, u, iv)
// gets vector iv of both, D loads of each in flight per lane (2 by default, 4 with LP_GEMV_DEEP).
template <int D, typename Step>
__device__ __forceinline__ void gemv_stream_pair(const uint4* gr, const uint4* ur, int vecs, int ld, const Step& step) {
    int i = threadIdx.x & 31;
    uint4 g[D], u[D];
    bool more = i + 32 * (D - 1) < vecs;
    if (more) {
#pragma unroll
        for (int d = 0; d < D; d++) g[d] = gemv_load(gr + i + 32 * d, ld);
#pragma unroll
        for (int d = 0; d < D; d++) u[d] = gemv_load(ur + i + 32 * d, ld);
    }
    if (ld & GEMV_LD_L2) {
        gemv_prefetch_l2(gr, 32 * D * 16, vecs * 16);
        gemv_prefetch_l2(ur, 32 * D * 16, vecs * 16);
    }
    lp_pdl_wait();
    while (more) {
#pragma unroll
        for (int d = 0; d < D; d++) step(g[d], u[d], i + 32 * d);
        i += 32 * D;
        more = i + 32 * (D - 1) < vecs;
        if (more) {
#pragma unroll
            for (int d = 0; d < D; d++) g[d] = gemv_load(gr + i + 32 * d, ld);
#pragma unroll
            for (int d = 0; d < D; d++) u[d] = gemv_load(ur + i + 32 * d, ld);
        }
    }
    for (; i < vecs; i += 32) step(gemv_load(gr + i, ld), gemv_load(ur + i, ld), i);
}

// gemv_row_accumulate adds to acc the dot product of 8 unpacked weights with the matching 8
// values (vector index iv) of one row of x. It is the one place the 8 products are summed, so
// every gemv kernel (fixed-size tiles and the batch-invariant one) sums them in the same order.
__device__ __forceinline__ void gemv_row_accumulate(float& acc, const float (&wf)[8], const float* xrow, int iv) {
    const float4* xr = reinterpret_cast<const float4*>(xrow) + 2 * iv;
    const float4 a = xr[0], b = xr[1];
    acc += a.x * wf[0] + a.y * wf[1] + a.z * wf[2] + a.w * wf[3] + b.x * wf[4] + b.y * wf[5] + b.z * wf[6] + b.w * wf[7];
}

// gemv_accumulate multiplies one 16-byte vector of 8 bf16 weights (vector index iv of the
// row) with the matching 8 values of each of the N rows of x.
template <int N>
__device__ __forceinline__ void gemv_accumulate(float (&acc)[N], const uint4 v, const float* x, int k, int iv) {
    float wf[8];
    bf16x8_unpack(v, wf);
#pragma unroll
    for (int r = 0; r < N; r++) gemv_row_accumulate(acc[r], wf, x + (size_t)r * k, iv);
}

// gemv_step is gemv_column's step: one weight vector times the N rows of x.
template <int N>
struct gemv_step {
    float (&acc)[N];
    const float* x;
    int k;
    __device__ __forceinline__ void operator()(const uint4 v, int iv) const { gemv_accumulate<N>(acc, v, x, k, iv); }
};

// gemv_column is one warp's work: output column j of y [n, m] (row stride m), weight row wrow.
template <int N, int D>
__device__ __forceinline__ void gemv_column_row(float* y, const float* x, const uint16_t* wrow, int m, int k, float alpha,
                                                float beta, int j, int ld) {
    const int lane = threadIdx.x & 31;
    const uint4* wr = reinterpret_cast<const uint4*>(wrow);
    float acc[N];
#pragma unroll
    for (int r = 0; r < N; r++) acc[r] = 0.f;
    gemv_stream<D>(wr, k / 8, ld, gemv_step<N>{acc, x, k});
#pragma unroll
    for (int r = 0; r < N; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0) {
            float* out = y + (size_t)r * m + j;
            *out = beta != 0.f ? alpha * s + beta * *out : alpha * s;
        }
    }
}

template <int N, int D>
__device__ __forceinline__ void gemv_column(float* y, const float* x, const uint16_t* w, int m, int k, float alpha, float beta,
                                            int j, int ld) {
    gemv_column_row<N, D>(y, x, w + (size_t)j * k, m, k, alpha, beta, j, ld);
}

template <int N, int D>
__global__ void gemv_kernel(float* y, const float* x, const uint16_t* w, int m, int k, float alpha, float beta, int ld) {
    lp_pdl_launch_dependents();
    const int j = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (j >= m) {
        lp_pdl_wait();
        return;
    }
    gemv_column<N, D>(y, x, w, m, k, alpha, beta, j, ld);
}

// The products of one input by up to LP_GEMV_PARTS matrices (q/k/v) in one launch: the launch's
// columns are the parts' columns one part after the other, and warp c computes column
// c - end[g-1] of the part g it falls in, with gemv_column, so each part's result is bitwise what
// its own lp_gemv_bf16 gives. One launch over q/k/v (6,144 columns in the Llama-3-8B shape)
// instead of three: k and v alone (1,024 columns, 128 blocks) do not fill 132 SMs and streamed
// at 1.4 TB/s in bench/results/gpu-h200.md; inside q's launch they ride its waves.
// gemv_part_w is part g's weights: w[g], or the A factor a LoRA segment table holds at wsrc[g]
// (the loraplex_kernels.h note on lp_gemv_parts says why).
__device__ __forceinline__ const uint16_t* gemv_part_w(const lp_gemv_parts& p, int g) {
    return p.wsrc[g] ? *p.wsrc[g] : p.w[g];
}

// gemv_parts_ok checks a parts launch's parts: each with its columns, and its weights at w (16-byte
// aligned) or behind wsrc, not both.
static bool gemv_parts_ok(const lp_gemv_parts& p, bool tables) {
    if (p.parts < 1 || p.parts > LP_GEMV_PARTS) return false;
    for (int g = 0; g < p.parts; g++) {
        const int sources = (p.w[g] != nullptr) + (p.wsrc[g] != nullptr) + (p.wtab[g] != nullptr);
        const int cols = p.end[g] - (g > 0 ? p.end[g - 1] : 0);
        if (((uintptr_t)p.w[g] % 16) != 0 || sources != 1 || cols <= 0 ||
            (p.wtab[g] && (!tables || p.t_rank[g] < 1 || cols % p.t_rank[g] != 0)))
            return false;
    }
    return true;
}

template <int N, int D>
__device__ __forceinline__ void gemv_parts_body(const lp_gemv_parts& p, const float* x, int k, int ld) {
    lp_pdl_launch_dependents();
    const int c = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (c >= p.end[p.parts - 1]) {
        lp_pdl_wait();
        return;
    }
    int g = 0;
    while (c >= p.end[g]) g++;
    const int first = g > 0 ? p.end[g - 1] : 0, m = p.end[g] - first, j = c - first;
    if (p.wtab[g]) {
        // A router's table: column j is row r of expert e's A; past the expert's rank it is 0
        // (written after the wait, as every output: the previous kernel may still read y).
        const lp_route_expert ex = p.wtab[g][j / p.t_rank[g]];
        const int r = j % p.t_rank[g];
        if (r >= ex.rank) {
            lp_pdl_wait();
            if ((threadIdx.x & 31) == 0)
                for (int row = 0; row < N; row++) p.y[g][(size_t)row * m + j] = 0.f;
            return;
        }
        gemv_column_row<N, D>(p.y[g], x, ex.a + (size_t)r * k, m, k, 1.f, 0.f, j, ld);
        return;
    }
    gemv_column<N, D>(p.y[g], x, gemv_part_w(p, g), m, k, 1.f, 0.f, j, ld);
}

template <int N, int D>
__global__ void gemv_parts_kernel(lp_gemv_parts p, const float* x, int k, int ld) {
    gemv_parts_body<N, D>(p, x, k, ld);
}

extern "C" int lp_gemv_parts_bf16(int n, int k, const float* x, lp_gemv_parts parts, int opts, lp_stream s) {
    if (n < 1 || n > LP_GEMV_MAX_ROWS || k <= 0 || k % 8 != 0 || ((uintptr_t)x % 16) != 0 || !gemv_parts_ok(parts, true))
        return (int)cudaErrorInvalidValue;
    dim3 grid((parts.end[parts.parts - 1] + GEMV_WARPS - 1) / GEMV_WARPS);
    dim3 block(32 * GEMV_WARPS);
    cudaStream_t st = as_stream(s);
    const gemv_opts o(opts);
    switch (n) {
        case 1:
            if (o.deep)
                lp_launch(gemv_parts_kernel<1, 8>, grid, block, 0, st, o.pdl, parts, x, k, o.ld);
            else
                lp_launch(gemv_parts_kernel<1, 4>, grid, block, 0, st, o.pdl, parts, x, k, o.ld);
            break;
        case 2: lp_launch(gemv_parts_kernel<2, 4>, grid, block, 0, st, o.pdl, parts, x, k, o.ld); break;
        case 3: lp_launch(gemv_parts_kernel<3, 4>, grid, block, 0, st, o.pdl, parts, x, k, o.ld); break;
        case 4: lp_launch(gemv_parts_kernel<4, 4>, grid, block, 0, st, o.pdl, parts, x, k, o.ld); break;
        case 5: lp_launch(gemv_parts_kernel<5, 4>, grid, block, 0, st, o.pdl, parts, x, k, o.ld); break;
        case 6: lp_launch(gemv_parts_kernel<6, 4>, grid, block, 0, st, o.pdl, parts, x, k, o.ld); break;
        case 7: lp_launch(gemv_parts_kernel<7, 4>, grid, block, 0, st, o.pdl, parts, x, k, o.ld); break;
        default: lp_launch(gemv_parts_kernel<8, 4>, grid, block, 0, st, o.pdl, parts, x, k, o.ld); break;
    }
    LP_CHECK_LAUNCH();
}

// gemv_swiglu_step is gemv_swiglu_kernel's step: vector iv of the gate and the up row times the N rows of x.
template <int N>
struct gemv_swiglu_step {
    float (&g)[N];
    float (&u)[N];
    const float* x;
    int k;
    __device__ __forceinline__ void operator()(const uint4 gv, const uint4 uv, int iv) const {
        gemv_accumulate<N>(g, gv, x, k, iv);
        gemv_accumulate<N>(u, uv, x, k, iv);
    }
};

// SwiGLU into the down projection's input (decode_fused.cu has the launch count it saves): one
// warp owns output column j of both the gate and the up product, streams both weight rows (two
// 16-byte loads of each in flight per lane, four in all, as above; twice that with
// LP_GEMV_DEEP) and writes silu(gate) * up, so neither product is stored and no activation
// kernel runs. Each product is
// summed in exactly the order gemv_kernel sums it (per lane: vectors lane, lane + 32, ... in
// increasing order, then warp_sum) and the activation is silu_mul_kernel's expression, so the
// result matches lp_gemv_bf16 twice + lp_silu_mul bit for bit (up to nvcc's FMA contraction
// choices, the same in both); no atomics, one writer per element, launch shape from n and m only.
template <int N, int D>
__device__ __forceinline__ void gemv_swiglu_body(float* act, const float* x, const uint16_t* wg, const uint16_t* wu, int m, int k,
                                                 int ld) {
    lp_pdl_launch_dependents();
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (j >= m) {
        lp_pdl_wait();
        return;
    }
    const uint4* gr = reinterpret_cast<const uint4*>(wg + (size_t)j * k);
    const uint4* ur = reinterpret_cast<const uint4*>(wu + (size_t)j * k);
    float g[N], u[N];
#pragma unroll
    for (int r = 0; r < N; r++) g[r] = u[r] = 0.f;
    gemv_stream_pair<D>(gr, ur, k / 8, ld, gemv_swiglu_step<N>{g, u, x, k});
#pragma unroll
    for (int r = 0; r < N; r++) {
        const float gs = warp_sum(g[r]), us = warp_sum(u[r]);
        if (lane == 0) act[(size_t)r * m + j] = gs / (1.f + __expf(-gs)) * us;
    }
}

template <int N, int D>
__global__ void gemv_swiglu_kernel(float* act, const float* x, const uint16_t* wg, const uint16_t* wu, int m, int k, int ld) {
    gemv_swiglu_body<N, D>(act, x, wg, wu, m, k, ld);
}

extern "C" int lp_gemv_swiglu_bf16(int n, int m, int k, const float* x, const uint16_t* wg, const uint16_t* wu, float* act,
                                   int opts, lp_stream s) {
    if (n < 1 || n > LP_GEMV_MAX_ROWS || m <= 0 || k <= 0 || k % 8 != 0 || ((uintptr_t)wg % 16) != 0 ||
        ((uintptr_t)wu % 16) != 0 || ((uintptr_t)x % 16) != 0)
        return (int)cudaErrorInvalidValue;
    dim3 grid((m + GEMV_WARPS - 1) / GEMV_WARPS);
    dim3 block(32 * GEMV_WARPS);
    cudaStream_t st = as_stream(s);
    const gemv_opts o(opts);
    switch (n) {
        case 1:
            if (o.deep)
                lp_launch(gemv_swiglu_kernel<1, 4>, grid, block, 0, st, o.pdl, act, x, wg, wu, m, k, o.ld);
            else
                lp_launch(gemv_swiglu_kernel<1, 2>, grid, block, 0, st, o.pdl, act, x, wg, wu, m, k, o.ld);
            break;
        case 2: lp_launch(gemv_swiglu_kernel<2, 2>, grid, block, 0, st, o.pdl, act, x, wg, wu, m, k, o.ld); break;
        case 3: lp_launch(gemv_swiglu_kernel<3, 2>, grid, block, 0, st, o.pdl, act, x, wg, wu, m, k, o.ld); break;
        case 4: lp_launch(gemv_swiglu_kernel<4, 2>, grid, block, 0, st, o.pdl, act, x, wg, wu, m, k, o.ld); break;
        case 5: lp_launch(gemv_swiglu_kernel<5, 2>, grid, block, 0, st, o.pdl, act, x, wg, wu, m, k, o.ld); break;
        case 6: lp_launch(gemv_swiglu_kernel<6, 2>, grid, block, 0, st, o.pdl, act, x, wg, wu, m, k, o.ld); break;
        case 7: lp_launch(gemv_swiglu_kernel<7, 2>, grid, block, 0, st, o.pdl, act, x, wg, wu, m, k, o.ld); break;
        default: lp_launch(gemv_swiglu_kernel<8, 2>, grid, block, 0, st, o.pdl, act, x, wg, wu, m, k, o.ld); break;
    }
    LP_CHECK_LAUNCH();
}

extern "C" int lp_gemv_bf16(int n, int m, int k, const float* x, const uint16_t* w, float* y, float alpha, float beta, int opts,
                            lp_stream s) {
    // 16-byte vector loads need k % 8 == 0 and aligned rows; x rows need k % 4 == 0.
    if (n < 1 || n > LP_GEMV_MAX_ROWS || m <= 0 || k <= 0 || k % 8 != 0 || ((uintptr_t)w % 16) != 0 || ((uintptr_t)x % 16) != 0)
        return (int)cudaErrorInvalidValue;
    dim3 grid((m + GEMV_WARPS - 1) / GEMV_WARPS);
    dim3 block(32 * GEMV_WARPS);
    cudaStream_t st = as_stream(s);
    const gemv_opts o(opts);
    switch (n) {
        case 1:
            if (o.deep)
                lp_launch(gemv_kernel<1, 8>, grid, block, 0, st, o.pdl, y, x, w, m, k, alpha, beta, o.ld);
            else
                lp_launch(gemv_kernel<1, 4>, grid, block, 0, st, o.pdl, y, x, w, m, k, alpha, beta, o.ld);
            break;
        case 2: lp_launch(gemv_kernel<2, 4>, grid, block, 0, st, o.pdl, y, x, w, m, k, alpha, beta, o.ld); break;
        case 3: lp_launch(gemv_kernel<3, 4>, grid, block, 0, st, o.pdl, y, x, w, m, k, alpha, beta, o.ld); break;
        case 4: lp_launch(gemv_kernel<4, 4>, grid, block, 0, st, o.pdl, y, x, w, m, k, alpha, beta, o.ld); break;
        case 5: lp_launch(gemv_kernel<5, 4>, grid, block, 0, st, o.pdl, y, x, w, m, k, alpha, beta, o.ld); break;
        case 6: lp_launch(gemv_kernel<6, 4>, grid, block, 0, st, o.pdl, y, x, w, m, k, alpha, beta, o.ld); break;
        case 7: lp_launch(gemv_kernel<7, 4>, grid, block, 0, st, o.pdl, y, x, w, m, k, alpha, beta, o.ld); break;
        default: lp_launch(gemv_kernel<8, 4>, grid, block, 0, st, o.pdl, y, x, w, m, k, alpha, beta, o.ld); break;
    }
    LP_CHECK_LAUNCH();
}

// Batch-invariant products (deterministic mode, lp_gemv_rows_bf16): y = alpha · x · Wᵀ
// (+ beta · y) for any number of rows, in tiles of LP_GEMV_MAX_ROWS rows (grid y) with
// gemv_kernel's arithmetic: one warp per output column, each lane's partial sum over its
// 16-byte weight vectors in index order, then the same warp reduction. Nothing a row computes
// depends on how many rows the product has or where the row sits in it: the tile only decides
// which rows share a weight load, and a row's instructions are the same in every tile (rows
// past the end are skipped, not computed differently). cuBLAS, by contrast, picks its kernel
// (tile shape, split-K) per shape, and the default path converts x to bf16 from two rows up
// while single rows take gemv_kernel in fp32, so a row's last bits change with the batch it
// is in. The price is bandwidth: the weights are read once per tile of 8 rows instead of
// once. k % 8 != 0 (or unaligned pointers) takes lanes over single elements, a choice fixed
// by the shape alone.
template <bool VEC>
__global__ void gemv_rows_kernel(float* y, const float* x, const uint16_t* w, int n, int m, int k, float alpha, float beta) {
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    const int r0 = blockIdx.y * LP_GEMV_MAX_ROWS;
    const int nr = min(LP_GEMV_MAX_ROWS, n - r0);
    if (j >= m) return;  // whole warps: the shuffles below see every lane
    const float* xt = x + (size_t)r0 * k;
    float acc[LP_GEMV_MAX_ROWS];
#pragma unroll
    for (int r = 0; r < LP_GEMV_MAX_ROWS; r++) acc[r] = 0.f;
    if (VEC) {
        const uint4* wr = reinterpret_cast<const uint4*>(w + (size_t)j * k);
#pragma unroll 4
        for (int i = lane; i < k / 8; i += 32) {
            float wf[8];
            bf16x8_unpack(wr[i], wf);
#pragma unroll
            for (int r = 0; r < LP_GEMV_MAX_ROWS; r++)
                if (r < nr) gemv_row_accumulate(acc[r], wf, xt + (size_t)r * k, i);
        }
    } else {
        const uint16_t* wr = w + (size_t)j * k;
        for (int c = lane; c < k; c += 32) {
            const float wv = bf16_to_f32(wr[c]);
#pragma unroll
            for (int r = 0; r < LP_GEMV_MAX_ROWS; r++)
                if (r < nr) acc[r] += xt[(size_t)r * k + c] * wv;
        }
    }
#pragma unroll
    for (int r = 0; r < LP_GEMV_MAX_ROWS; r++) {
        const float s = warp_sum(acc[r]);
        if (r < nr && lane == 0) {
            float* out = y + (size_t)(r0 + r) * m + j;
            *out = beta != 0.f ? alpha * s + beta * *out : alpha * s;
        }
    }
}

extern "C" int lp_gemv_rows_bf16(int n, int m, int k, const float* x, const uint16_t* w, float* y, float alpha, float beta,
                                 lp_stream s) {
    const int tiles = (n + LP_GEMV_MAX_ROWS - 1) / LP_GEMV_MAX_ROWS;
    if (n < 1 || m <= 0 || k <= 0 || tiles > 65535 || !x || !w || !y) return (int)cudaErrorInvalidValue;
    dim3 grid((m + GEMV_WARPS - 1) / GEMV_WARPS, tiles);
    dim3 block(32 * GEMV_WARPS);
    if (k % 8 == 0 && ((uintptr_t)w % 16) == 0 && ((uintptr_t)x % 16) == 0)
        gemv_rows_kernel<true><<<grid, block, 0, as_stream(s)>>>(y, x, w, n, m, k, alpha, beta);
    else
        gemv_rows_kernel<false><<<grid, block, 0, as_stream(s)>>>(y, x, w, n, m, k, alpha, beta);
    LP_CHECK_LAUNCH();
}

// RMSNorm folded into the GEMVs that read its output (issue 15 item 2; LORAPLEX_NORM_GEMV,
// on by default, cuda/fused.go; model.NormFuser): x += delta; h = rmsnorm(x)·w_norm feeds the q/k/v products
// (parts) and the gate/up products + SwiGLU of a decode layer, and h is never stored, so the two
// add+RMSNorm launches of a layer (7.1 and 7.3 µs in the H100 breakdown of
// bench/results/gpu-h100/goals-2026-12-07-ab, about 0.45 ms of a 6.9 ms step) go.
//
// Design. Every product needs the whole row's 1/rms before its output is known, but not before
// its first multiply: Σ_c W[j,c]·w[c]·v[c]·inv = inv · Σ_c W[j,c]·(w[c]·v[c]), with v = x + delta.
// So each warp streams its weight row exactly as gemv_column does, multiplies it with w ⊙ v
// instead of x, and from the same loads of v (its lanes cover every vector of the row once)
// accumulates Σ v²; after the warp reduction it scales its sums by rsqrt(Σv²/k + eps). No block
// prologue, no barrier, no second pass, no grid-wide sync: the weight stream starts as early as
// in gemv_kernel. The cost of every warp recomputing its rows' norm is in L1/L2 and the ALUs, not
// HBM: per 16-byte weight vector a lane reads, for each row, 32 bytes of delta besides the 32 of
// x it always read, plus 32 bytes of w_norm shared by all rows (at one row, 96 B of L1 reads per
// 16 B of weights instead of 32; x, delta and w_norm are k floats, 16 KB each per row at a
// hidden size of 4096, 32 KB at 8192, and stay in L1/L2 for the whole launch; the products'
// outputs, up to 14336 wide, are what the weights stream), and 4 fp32 operations per element and row
// instead of 1 (the add, Σv², w·v, the product): at one row and 2.8 TB/s of weights about 6
// Tflop/s, a tenth of an H100's fp32 rate, hidden under the weight stream. From 2 rows up the
// L1 traffic grows with the rows (x and delta are per row) while the weight bytes do not, which
// is why the switch is measured at batch 1 (gemvRows, the GEMV path's row limit, is 1 by default).
// The new residual v = x + delta is written by the launch's column-0 warp only, to resid, a buffer
// that overlaps neither x nor delta (checked): an in-place x += delta would race with the other
// blocks' reads of x. The forward pass then uses resid as its residual (it hands the normed-state
// buffer, which the fused step leaves unused, and swaps the two).
//
// Results against the unfused lp_add_rmsnorm + lp_gemv_parts_bf16 / lp_gemv_swiglu_bf16: the
// residual v is bitwise the same (the same single fp32 add). The products are not bitwise: the
// unfused path rounds h = w·(v·inv) per element and the sum of squares is reduced in another
// order (256-thread block_sum there, 32 lanes over 8-wide vectors here), so inv may differ by an
// ulp or two and each product term by a few ulps: |fused - unfused| <= ~4·2⁻²⁴·Σ|W·h| per output
// plus the reordering the products already have, i.e. around 1e-6 of the output's scale for
// k = 4096. TestNormGEMV (cuda/fused_test.go) bounds it at 1e-5 of the largest value (the CPU
// within the bf16 products' 1e-4, as TestFusedGateUpSiLU), and the fixture suites run with it on.
// Determinism: no atomics, one writer per element (outputs: one warp's lane 0; resid: the
// column-0 warp), the reduction order fixed by k; launch shape from n, k and the widths only
// (fixed by a step's key), so graph replays are the same launches.
struct norm_gemv_in {
    const float* x;      // [n, k] the residual
    const float* delta;  // [n, k] added to it first; nullptr: the norm reads x as it is
    float* resid;        // [n, k] receives x + delta when delta is set
    const float* w;      // [k] the norm's weight
    float eps;
};

// norm_gemv_input reads vector iv (8 values) of the row at element offset row_off: v = x (+ delta),
// adds Σv² to ss, stores v to resid when store is set, and returns u = w ⊙ v (the normed input
// before its 1/rms factor). w0, w1 are the norm weight's vector iv, loaded once for every row.
template <bool ADD>
__device__ __forceinline__ void norm_gemv_input(float (&u)[8], float& ss, const norm_gemv_in& in, const float4 w0,
                                                const float4 w1, size_t row_off, int iv, bool store) {
    const size_t o = row_off + 8 * (size_t)iv;
    float4 a = *reinterpret_cast<const float4*>(in.x + o), b = *reinterpret_cast<const float4*>(in.x + o + 4);
    if (ADD) {
        const float4 da = *reinterpret_cast<const float4*>(in.delta + o), db = *reinterpret_cast<const float4*>(in.delta + o + 4);
        a.x += da.x;
        a.y += da.y;
        a.z += da.z;
        a.w += da.w;
        b.x += db.x;
        b.y += db.y;
        b.z += db.z;
        b.w += db.w;
        if (store) {
            *reinterpret_cast<float4*>(in.resid + o) = a;
            *reinterpret_cast<float4*>(in.resid + o + 4) = b;
        }
    }
    ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w + b.x * b.x + b.y * b.y + b.z * b.z + b.w * b.w;
    u[0] = w0.x * a.x;
    u[1] = w0.y * a.y;
    u[2] = w0.z * a.z;
    u[3] = w0.w * a.w;
    u[4] = w1.x * b.x;
    u[5] = w1.y * b.y;
    u[6] = w1.z * b.z;
    u[7] = w1.w * b.w;
}

// dot8 is the dot product of 8 unpacked weights with 8 input values, in gemv_row_accumulate's order.
__device__ __forceinline__ float dot8(const float (&wf)[8], const float (&u)[8]) {
    return u[0] * wf[0] + u[1] * wf[1] + u[2] * wf[2] + u[3] * wf[3] + u[4] * wf[4] + u[5] * wf[5] + u[6] * wf[6] + u[7] * wf[7];
}

// norm_gemv_scale is a row's 1/rms from the warp's partial sums of squares (rmsnorm_kernel's expression).
__device__ __forceinline__ float norm_gemv_scale(float ss, int k, float eps) { return rsqrtf(warp_sum(ss) / k + eps); }

// norm_gemv_step multiplies one 16-byte weight vector (vector index iv) with the normed input of each of the N rows.
template <int N, bool ADD>
__device__ __forceinline__ void norm_gemv_step(float (&acc)[N], float (&ss)[N], const uint4 v, const norm_gemv_in& in, int k,
                                               int iv, bool store) {
    float wf[8];
    bf16x8_unpack(v, wf);
    const float4* nw = reinterpret_cast<const float4*>(in.w) + 2 * iv;
    const float4 w0 = nw[0], w1 = nw[1];
#pragma unroll
    for (int r = 0; r < N; r++) {
        float u[8];
        norm_gemv_input<ADD>(u, ss[r], in, w0, w1, (size_t)r * k, iv, store);
        acc[r] += dot8(wf, u);
    }
}

// norm_gemv_parts_step is norm_gemv_parts_kernel's step (norm_gemv_step).
template <int N, bool ADD>
struct norm_gemv_parts_step {
    float (&acc)[N];
    float (&ss)[N];
    const norm_gemv_in& in;
    int k;
    bool store;
    __device__ __forceinline__ void operator()(const uint4 v, int iv) const { norm_gemv_step<N, ADD>(acc, ss, v, in, k, iv, store); }
};

// gemv_parts_kernel with the norm folded in: warp c computes column c - end[g-1] of part g with
// gemv_column's loads and order, on w ⊙ v, and scales by the row's 1/rms at the end.
template <int N, bool ADD, int D>
__device__ __forceinline__ void norm_gemv_parts_body(const lp_gemv_parts& p, const norm_gemv_in& in, int k, int ld) {
    lp_pdl_launch_dependents();
    const int lane = threadIdx.x & 31;
    const int c = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (c >= p.end[p.parts - 1]) {  // whole warps: the shuffles below see every lane
        lp_pdl_wait();
        return;
    }
    int g = 0;
    while (c >= p.end[g]) g++;
    const int first = g > 0 ? p.end[g - 1] : 0;
    const int m = p.end[g] - first, j = c - first;
    const bool store = ADD && c == 0;
    const uint4* wr = reinterpret_cast<const uint4*>(gemv_part_w(p, g) + (size_t)j * k);
    float acc[N], ss[N];
#pragma unroll
    for (int r = 0; r < N; r++) acc[r] = ss[r] = 0.f;
    gemv_stream<D>(wr, k / 8, ld, norm_gemv_parts_step<N, ADD>{acc, ss, in, k, store});
#pragma unroll
    for (int r = 0; r < N; r++) {
        const float s = warp_sum(acc[r]), inv = norm_gemv_scale(ss[r], k, in.eps);
        if (lane == 0) p.y[g][(size_t)r * m + j] = s * inv;
    }
}

template <int N, bool ADD, int D>
__global__ void norm_gemv_parts_kernel(lp_gemv_parts p, norm_gemv_in in, int k, int ld) {
    norm_gemv_parts_body<N, ADD, D>(p, in, k, ld);
}

// norm_swiglu_step multiplies one gate and one up weight vector (vector index iv) with the
// normed input of each of the N rows, computed once for both.
template <int N, bool ADD>
__device__ __forceinline__ void norm_swiglu_step(float (&ga)[N], float (&ua)[N], float (&ss)[N], const uint4 gv, const uint4 uv,
                                                 const norm_gemv_in& in, int k, int iv, bool store) {
    float gf[8], uf[8];
    bf16x8_unpack(gv, gf);
    bf16x8_unpack(uv, uf);
    const float4* nw = reinterpret_cast<const float4*>(in.w) + 2 * iv;
    const float4 w0 = nw[0], w1 = nw[1];
#pragma unroll
    for (int r = 0; r < N; r++) {
        float u[8];
        norm_gemv_input<ADD>(u, ss[r], in, w0, w1, (size_t)r * k, iv, store);
        ga[r] += dot8(gf, u);
        ua[r] += dot8(uf, u);
    }
}

// norm_gemv_swiglu_step is norm_gemv_swiglu_kernel's step (norm_swiglu_step).
template <int N, bool ADD>
struct norm_gemv_swiglu_step {
    float (&g)[N];
    float (&u)[N];
    float (&ss)[N];
    const norm_gemv_in& in;
    int k;
    bool store;
    __device__ __forceinline__ void operator()(const uint4 gv, const uint4 uv, int iv) const {
        norm_swiglu_step<N, ADD>(g, u, ss, gv, uv, in, k, iv, store);
    }
};

// gemv_swiglu_kernel with the norm folded in: the same loads and order on w ⊙ v, both sums
// scaled by the row's 1/rms, then silu_mul_kernel's expression.
template <int N, bool ADD, int D>
__device__ __forceinline__ void norm_gemv_swiglu_body(float* act, const norm_gemv_in& in, const uint16_t* wg, const uint16_t* wu,
                                                      int m, int k, int ld) {
    lp_pdl_launch_dependents();
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (j >= m) {  // whole warps
        lp_pdl_wait();
        return;
    }
    const bool store = ADD && j == 0;
    const uint4* gr = reinterpret_cast<const uint4*>(wg + (size_t)j * k);
    const uint4* ur = reinterpret_cast<const uint4*>(wu + (size_t)j * k);
    float g[N], u[N], ss[N];
#pragma unroll
    for (int r = 0; r < N; r++) g[r] = u[r] = ss[r] = 0.f;
    gemv_stream_pair<D>(gr, ur, k / 8, ld, norm_gemv_swiglu_step<N, ADD>{g, u, ss, in, k, store});
#pragma unroll
    for (int r = 0; r < N; r++) {
        const float inv = norm_gemv_scale(ss[r], k, in.eps);
        const float gs = warp_sum(g[r]) * inv, us = warp_sum(u[r]) * inv;
        if (lane == 0) act[(size_t)r * m + j] = gs / (1.f + __expf(-gs)) * us;
    }
}

template <int N, bool ADD, int D>
__global__ void norm_gemv_swiglu_kernel(float* act, norm_gemv_in in, const uint16_t* wg, const uint16_t* wu, int m, int k,
                                        int ld) {
    norm_gemv_swiglu_body<N, ADD, D>(act, in, wg, wu, m, k, ld);
}

// Staged norm-fused GEMVs (LP_GEMV_STAGE, LORAPLEX_NORM_STAGE, one row only). Nsight Compute on
// an H100's batch-1 decode (bench/results/gpu-h100/goals-2026-12-07-final3/ncu-decode1.txt) put
// the q/k/v launch above at 39.6 us for 50 MB of weights (1.27 TB/s) with L1 78% busy and DRAM
// 44%: the design note's 96 bytes of x, delta and w_norm read through L1 per 16 bytes of weights
// are not hidden at that rate (the plain GEMVs read 32 and stream 2.0-2.6 TB/s; gate/up, 96 per 32,
// 2.58). Here each block first computes the row's u = w_norm ⊙ (x + delta) once into shared memory
// (k floats: at most GEMV_STAGE_MAX_K) with the whole block's sum of squares, then streams its
// weights against u: 32 bytes of shared-memory reads per 16 bytes of weights for q/k/v, 32 per 32
// for gate/up. The price: a block prologue (k floats each of x, delta and w_norm from L2, and
// block_sum's two barriers) before the first product, which under PDL also waits before the
// first weight load (the unstaged kernels issue D loads a lane first; PDL is off by default).
// The products are the unstaged kernels' term for term (u = w ⊙ v, then gemv_row_accumulate's
// order, which is dot8's); only 1/rms differs, from a 256-thread block sum instead of each
// warp's 32 lanes, so they stay within TestNormGEMV's bound of the unfused path and the
// residual is the same single add (bitwise). Block 0 writes the residual (column 0 is in it
// whatever the parts). Measured on an H100 (bench/results/gpu-h100/goals-2026-12-07-s25a):
// batch-1 decode 1.039x at ctx 128, 1.041x at 4k, 1.030x at 32k against the unstaged kernels;
// on by default since.
//
// The widest staged row: k floats of dynamic shared memory plus norm_gemv_stage's 32 static ones
// within the 48 KB a launch gets without opting in to more, rounded down to the GEMVs' 8-wide
// vectors.
#define GEMV_STAGE_MAX_K ((48 * 1024 / 4 - 32) / 8 * 8)

// norm_gemv_stage is the staged kernels' prologue: after the wait on the previous kernel it
// writes u = w ⊙ (x + delta) of the launch's one row into the block's dynamic shared memory (su
// points there on return; block 0 also writes x + delta to resid) and returns the row's 1/rms.
// Every thread of the block must call it (block_sum's barriers also make su visible to every
// warp); its loads are load_sum4's.
template <bool ADD>
__device__ __forceinline__ float norm_gemv_stage(float*& su, const norm_gemv_in& in, int k) {
    extern __shared__ float4 stage4[];
    __shared__ float red[32];
    su = reinterpret_cast<float*>(stage4);
    lp_pdl_launch_dependents();
    lp_pdl_wait();
    const bool store = blockIdx.x == 0;
    constexpr int V = 4;
    const int n4 = k >> 2, stride = blockDim.x;
    const float4* x4 = reinterpret_cast<const float4*>(in.x);
    const float4* d4 = reinterpret_cast<const float4*>(ADD ? in.delta : in.x);
    const float4* w4 = reinterpret_cast<const float4*>(in.w);
    float4* u4 = reinterpret_cast<float4*>(su);
    float ss = 0.f;
    for (int base = threadIdx.x; base < n4; base += V * stride) {
        float4 v[V];
        load_sum4<ADD>(v, x4, d4, base, stride, n4);
#pragma unroll
        for (int q = 0; q < V; q++) {
            const int i = base + q * stride;
            if (i < n4) {
                if (ADD && store) reinterpret_cast<float4*>(in.resid)[i] = v[q];
                ss += v[q].x * v[q].x + v[q].y * v[q].y + v[q].z * v[q].z + v[q].w * v[q].w;
                const float4 w = w4[i];
                u4[i] = make_float4(w.x * v[q].x, w.y * v[q].y, w.z * v[q].z, w.w * v[q].w);
            }
        }
    }
    return rsqrtf(block_sum(ss, red) / k + in.eps);
}

// staged_step is the staged kernels' step: one weight vector times u (gemv_row_accumulate's order).
struct staged_step {
    float& acc;
    const float* su;
    __device__ __forceinline__ void operator()(const uint4 v, int iv) const {
        float wf[8];
        bf16x8_unpack(v, wf);
        gemv_row_accumulate(acc, wf, su, iv);
    }
};

// staged_pair_step is staged_step for gate and up: u read once for both.
struct staged_pair_step {
    float& ga;
    float& ua;
    const float* su;
    __device__ __forceinline__ void operator()(const uint4 gv, const uint4 uv, int iv) const {
        float gf[8], uf[8];
        bf16x8_unpack(gv, gf);
        bf16x8_unpack(uv, uf);
        const float4* xr = reinterpret_cast<const float4*>(su) + 2 * iv;
        const float4 a = xr[0], b = xr[1];
        const float u[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
        ga += dot8(gf, u);
        ua += dot8(uf, u);
    }
};

// norm_gemv_parts_staged_kernel is norm_gemv_parts_kernel at one row on a staged u (dynamic shared
// memory of k floats): warp c computes column c - end[g-1] of part g.
template <bool ADD, int D>
__global__ void norm_gemv_parts_staged_kernel(lp_gemv_parts p, norm_gemv_in in, int k, int ld) {
    float* su;
    const float inv = norm_gemv_stage<ADD>(su, in, k);
    const int c = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (c >= p.end[p.parts - 1]) return;  // whole warps, after the block's barriers
    int g = 0;
    while (c >= p.end[g]) g++;
    const int j = c - (g > 0 ? p.end[g - 1] : 0);
    float acc = 0.f;
    gemv_stream<D>(reinterpret_cast<const uint4*>(gemv_part_w(p, g) + (size_t)j * k), k / 8, ld, staged_step{acc, su});
    const float s = warp_sum(acc);
    if ((threadIdx.x & 31) == 0) p.y[g][j] = s * inv;
}

// norm_gemv_parts_staged_pair_kernel is norm_gemv_parts_staged_kernel with two adjacent columns
// a warp (LP_GEMV_STAGE_PAIR): the staged row is read from shared memory once for two weight
// vectors (staged_pair_step) and the launch has half the blocks, so half the prologues, each of
// which reads the whole row of x, delta and the norm weight from L2 (at q/k/v's 768 blocks of
// one-column warps in the Llama-3-8B shape, ~37 MB beside 50 MB of weights: Nsight Compute put
// that launch at 1.6 TB/s, bench/results/gpu-h100/goals-2026-12-07-s25b/prof-fold-on.txt).
// Each column's sum is staged_step's, vector for vector (dot8 is gemv_row_accumulate's order),
// so the products are bitwise the unpaired kernel's. A pair whose second column opens the next
// part (or is past the end) takes its columns one after the other.
template <bool ADD, int D>
__global__ void norm_gemv_parts_staged_pair_kernel(lp_gemv_parts p, norm_gemv_in in, int k, int ld) {
    float* su;
    const float inv = norm_gemv_stage<ADD>(su, in, k);
    const int total = p.end[p.parts - 1];
    const int c = 2 * (int)(blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5));
    if (c >= total) return;  // whole warps, after the block's barriers
    const bool lane0 = (threadIdx.x & 31) == 0;
    int g = 0;
    while (c >= p.end[g]) g++;
    if (c + 1 < p.end[g]) {
        const int j = c - (g > 0 ? p.end[g - 1] : 0);
        const uint16_t* w = gemv_part_w(p, g) + (size_t)j * k;
        float a0 = 0.f, a1 = 0.f;
        gemv_stream_pair<D>(reinterpret_cast<const uint4*>(w), reinterpret_cast<const uint4*>(w + k), k / 8, ld,
                            staged_pair_step{a0, a1, su});
        const float s0 = warp_sum(a0), s1 = warp_sum(a1);
        if (lane0) {
            p.y[g][j] = s0 * inv;
            p.y[g][j + 1] = s1 * inv;
        }
        return;
    }
    for (int cc = c; cc < c + 2 && cc < total; cc++) {
        while (cc >= p.end[g]) g++;
        const int j = cc - (g > 0 ? p.end[g - 1] : 0);
        float acc = 0.f;
        gemv_stream<2 * D>(reinterpret_cast<const uint4*>(gemv_part_w(p, g) + (size_t)j * k), k / 8, ld, staged_step{acc, su});
        const float s = warp_sum(acc);
        if (lane0) p.y[g][j] = s * inv;
    }
}

// norm_gemv_swiglu_staged_kernel is norm_gemv_swiglu_kernel at one row on a staged u.
template <bool ADD, int D>
__global__ void norm_gemv_swiglu_staged_kernel(float* act, norm_gemv_in in, const uint16_t* wg, const uint16_t* wu, int m, int k,
                                               int ld) {
    float* su;
    const float inv = norm_gemv_stage<ADD>(su, in, k);
    const int j = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (j >= m) return;  // whole warps, after the block's barriers
    float ga = 0.f, ua = 0.f;
    gemv_stream_pair<D>(reinterpret_cast<const uint4*>(wg + (size_t)j * k), reinterpret_cast<const uint4*>(wu + (size_t)j * k),
                        k / 8, ld, staged_pair_step{ga, ua, su});
    const float gs = warp_sum(ga) * inv, us = warp_sum(ua) * inv;
    if ((threadIdx.x & 31) == 0) act[j] = gs / (1.f + __expf(-gs)) * us;
}

// gemv_staged says whether a norm-fused launch of n rows of width k takes the staged kernels.
static bool gemv_staged(const gemv_opts& o, int n, int k) { return o.stage && n == 1 && k <= GEMV_STAGE_MAX_K; }

extern "C" int lp_norm_gemv_staged(int n, int k, int opts) { return gemv_staged(gemv_opts(opts), n, k) ? 1 : 0; }

// norm_gemv_in_ok checks the input side of a norm-fused launch: the GEMV's row and alignment
// rules for x, delta, resid and w, delta and resid given together, resid overlapping neither x
// nor delta (its writer warp would race with the other warps' reads).
static bool norm_gemv_in_ok(int n, int k, const norm_gemv_in& in) {
    if (n < 1 || n > LP_GEMV_MAX_ROWS || k <= 0 || k % 8 != 0 || !in.x || !in.w || (in.delta == nullptr) != (in.resid == nullptr))
        return false;
    const uintptr_t x = (uintptr_t)in.x, d = (uintptr_t)in.delta, r = (uintptr_t)in.resid, bytes = (uintptr_t)n * k * sizeof(float);
    if (x % 16 != 0 || d % 16 != 0 || r % 16 != 0 || (uintptr_t)in.w % 16 != 0) return false;
    if (in.resid && ((r < x + bytes && x < r + bytes) || (r < d + bytes && d < r + bytes))) return false;
    return true;
}

template <bool ADD>
static void launch_norm_gemv_parts(int n, dim3 grid, dim3 block, cudaStream_t st, const gemv_opts& o, const lp_gemv_parts& p,
                                   const norm_gemv_in& in, int k) {
    if (gemv_staged(o, n, k)) {
        const size_t smem = (size_t)k * sizeof(float);
        if (o.pair) {
            // Two columns a warp, 4 loads of each row in flight per lane, deep or not: as many
            // loads in flight over the launch as the unpaired kernel's 4 a lane with twice the warps.
            const dim3 pairs((p.end[p.parts - 1] + 2 * GEMV_WARPS - 1) / (2 * GEMV_WARPS));
            lp_launch(norm_gemv_parts_staged_pair_kernel<ADD, 4>, pairs, block, smem, st, o.pdl, p, in, k, o.ld);
            return;
        }
        if (o.deep)
            lp_launch(norm_gemv_parts_staged_kernel<ADD, 8>, grid, block, smem, st, o.pdl, p, in, k, o.ld);
        else
            lp_launch(norm_gemv_parts_staged_kernel<ADD, 4>, grid, block, smem, st, o.pdl, p, in, k, o.ld);
        return;
    }
    switch (n) {
        case 1:
            if (o.deep)
                lp_launch(norm_gemv_parts_kernel<1, ADD, 8>, grid, block, 0, st, o.pdl, p, in, k, o.ld);
            else
                lp_launch(norm_gemv_parts_kernel<1, ADD, 4>, grid, block, 0, st, o.pdl, p, in, k, o.ld);
            break;
        case 2: lp_launch(norm_gemv_parts_kernel<2, ADD, 4>, grid, block, 0, st, o.pdl, p, in, k, o.ld); break;
        case 3: lp_launch(norm_gemv_parts_kernel<3, ADD, 4>, grid, block, 0, st, o.pdl, p, in, k, o.ld); break;
        case 4: lp_launch(norm_gemv_parts_kernel<4, ADD, 4>, grid, block, 0, st, o.pdl, p, in, k, o.ld); break;
        case 5: lp_launch(norm_gemv_parts_kernel<5, ADD, 4>, grid, block, 0, st, o.pdl, p, in, k, o.ld); break;
        case 6: lp_launch(norm_gemv_parts_kernel<6, ADD, 4>, grid, block, 0, st, o.pdl, p, in, k, o.ld); break;
        case 7: lp_launch(norm_gemv_parts_kernel<7, ADD, 4>, grid, block, 0, st, o.pdl, p, in, k, o.ld); break;
        default: lp_launch(norm_gemv_parts_kernel<8, ADD, 4>, grid, block, 0, st, o.pdl, p, in, k, o.ld); break;
    }
}

extern "C" int lp_norm_gemv_parts_bf16(int n, int k, const float* x, const float* delta, float* resid, const float* norm_w,
                                       float eps, lp_gemv_parts parts, int opts, lp_stream s) {
    const norm_gemv_in in = {x, delta, resid, norm_w, eps};
    if (!norm_gemv_in_ok(n, k, in) || !gemv_parts_ok(parts, false)) return (int)cudaErrorInvalidValue;
    dim3 grid((parts.end[parts.parts - 1] + GEMV_WARPS - 1) / GEMV_WARPS);
    dim3 block(32 * GEMV_WARPS);
    if (delta)
        launch_norm_gemv_parts<true>(n, grid, block, as_stream(s), gemv_opts(opts), parts, in, k);
    else
        launch_norm_gemv_parts<false>(n, grid, block, as_stream(s), gemv_opts(opts), parts, in, k);
    LP_CHECK_LAUNCH();
}

template <bool ADD>
static void launch_norm_gemv_swiglu(int n, dim3 grid, dim3 block, cudaStream_t st, const gemv_opts& o, float* act,
                                    const norm_gemv_in& in, const uint16_t* wg, const uint16_t* wu, int m, int k) {
    if (gemv_staged(o, n, k)) {
        const size_t smem = (size_t)k * sizeof(float);
        if (o.deep)
            lp_launch(norm_gemv_swiglu_staged_kernel<ADD, 4>, grid, block, smem, st, o.pdl, act, in, wg, wu, m, k, o.ld);
        else
            lp_launch(norm_gemv_swiglu_staged_kernel<ADD, 2>, grid, block, smem, st, o.pdl, act, in, wg, wu, m, k, o.ld);
        return;
    }
    switch (n) {
        case 1:
            if (o.deep)
                lp_launch(norm_gemv_swiglu_kernel<1, ADD, 4>, grid, block, 0, st, o.pdl, act, in, wg, wu, m, k, o.ld);
            else
                lp_launch(norm_gemv_swiglu_kernel<1, ADD, 2>, grid, block, 0, st, o.pdl, act, in, wg, wu, m, k, o.ld);
            break;
        case 2: lp_launch(norm_gemv_swiglu_kernel<2, ADD, 2>, grid, block, 0, st, o.pdl, act, in, wg, wu, m, k, o.ld); break;
        case 3: lp_launch(norm_gemv_swiglu_kernel<3, ADD, 2>, grid, block, 0, st, o.pdl, act, in, wg, wu, m, k, o.ld); break;
        case 4: lp_launch(norm_gemv_swiglu_kernel<4, ADD, 2>, grid, block, 0, st, o.pdl, act, in, wg, wu, m, k, o.ld); break;
        case 5: lp_launch(norm_gemv_swiglu_kernel<5, ADD, 2>, grid, block, 0, st, o.pdl, act, in, wg, wu, m, k, o.ld); break;
        case 6: lp_launch(norm_gemv_swiglu_kernel<6, ADD, 2>, grid, block, 0, st, o.pdl, act, in, wg, wu, m, k, o.ld); break;
        case 7: lp_launch(norm_gemv_swiglu_kernel<7, ADD, 2>, grid, block, 0, st, o.pdl, act, in, wg, wu, m, k, o.ld); break;
        default: lp_launch(norm_gemv_swiglu_kernel<8, ADD, 2>, grid, block, 0, st, o.pdl, act, in, wg, wu, m, k, o.ld); break;
    }
}

extern "C" int lp_norm_gemv_swiglu_bf16(int n, int m, int k, const float* x, const float* delta, float* resid, const float* norm_w,
                                        float eps, const uint16_t* wg, const uint16_t* wu, float* act, int opts, lp_stream s) {
    const norm_gemv_in in = {x, delta, resid, norm_w, eps};
    if (!norm_gemv_in_ok(n, k, in) || m <= 0 || !act || ((uintptr_t)wg % 16) != 0 || ((uintptr_t)wu % 16) != 0)
        return (int)cudaErrorInvalidValue;
    dim3 grid((m + GEMV_WARPS - 1) / GEMV_WARPS);
    dim3 block(32 * GEMV_WARPS);
    if (delta)
        launch_norm_gemv_swiglu<true>(n, grid, block, as_stream(s), gemv_opts(opts), act, in, wg, wu, m, k);
    else
        launch_norm_gemv_swiglu<false>(n, grid, block, as_stream(s), gemv_opts(opts), act, in, wg, wu, m, k);
    LP_CHECK_LAUNCH();
}
