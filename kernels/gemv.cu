// Skinny GEMM for decode: y[n, m] = alpha · x[n, k] · W[m, k]ᵀ (+ beta · y) for n <= 8 rows.
//
// Decode is a weight stream: every weight is read once per step and used n times. cuBLAS
// GEMM tiles are built for large n and reach a fraction of HBM bandwidth at n = 1; here one
// warp owns one output column, lanes read its weight row in 16-byte vectors (8 bf16), and each
// weight vector is multiplied with all n rows of x (fp32, small enough to stay in L1/L2). No
// conversion of x to bf16 is needed either.
#include "common.cuh"

#define GEMV_WARPS 8


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

// gemv_column is one warp's work: output column j of y [n, m] (row stride m).
template <int N>
__device__ __forceinline__ void gemv_column(float* y, const float* x, const uint16_t* w, int m, int k, float alpha, float beta,
                                            int j) {
    const int lane = threadIdx.x & 31;
    const uint4* wr = reinterpret_cast<const uint4*>(w + (size_t)j * k);
    float acc[N];
#pragma unroll
    for (int r = 0; r < N; r++) acc[r] = 0.f;
    const int vecs = k / 8;
    // Four independent 16-byte loads per lane in flight per iteration: a warp streaming one
    // row needs that much memory-level parallelism to approach HBM bandwidth.
    int i = lane;
    for (; i + 96 < vecs; i += 128) {
        const uint4 v0 = wr[i], v1 = wr[i + 32], v2 = wr[i + 64], v3 = wr[i + 96];
        gemv_accumulate<N>(acc, v0, x, k, i);
        gemv_accumulate<N>(acc, v1, x, k, i + 32);
        gemv_accumulate<N>(acc, v2, x, k, i + 64);
        gemv_accumulate<N>(acc, v3, x, k, i + 96);
    }
    for (; i < vecs; i += 32) gemv_accumulate<N>(acc, wr[i], x, k, i);
#pragma unroll
    for (int r = 0; r < N; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0) {
            float* out = y + (size_t)r * m + j;
            *out = beta != 0.f ? alpha * s + beta * *out : alpha * s;
        }
    }
}

template <int N>
__global__ void gemv_kernel(float* y, const float* x, const uint16_t* w, int m, int k, float alpha, float beta) {
    const int j = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (j >= m) return;
    gemv_column<N>(y, x, w, m, k, alpha, beta, j);
}

// The products of one input by up to LP_GEMV_PARTS matrices (q/k/v) in one launch: the launch's
// columns are the parts' columns one part after the other, and warp c computes column
// c - end[g-1] of the part g it falls in, with gemv_column, so each part's result is bitwise what
// its own lp_gemv_bf16 gives. One launch over q/k/v (6,144 columns in the Llama-3-8B shape)
// instead of three: k and v alone (1,024 columns, 128 blocks) do not fill 132 SMs and streamed
// at 1.4 TB/s in bench/results/gpu-h200.md; inside q's launch they ride its waves.
template <int N>
__global__ void gemv_parts_kernel(lp_gemv_parts p, const float* x, int k) {
    const int c = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (c >= p.end[p.parts - 1]) return;
    int g = 0;
    while (c >= p.end[g]) g++;
    const int first = g > 0 ? p.end[g - 1] : 0;
    gemv_column<N>(p.y[g], x, p.w[g], p.end[g] - first, k, 1.f, 0.f, c - first);
}

extern "C" int lp_gemv_parts_bf16(int n, int k, const float* x, lp_gemv_parts parts, lp_stream s) {
    if (n < 1 || n > LP_GEMV_MAX_ROWS || k <= 0 || k % 8 != 0 || ((uintptr_t)x % 16) != 0 || parts.parts < 1 ||
        parts.parts > LP_GEMV_PARTS)
        return (int)cudaErrorInvalidValue;
    for (int g = 0; g < parts.parts; g++)
        if (((uintptr_t)parts.w[g] % 16) != 0 || parts.end[g] <= (g > 0 ? parts.end[g - 1] : 0))
            return (int)cudaErrorInvalidValue;
    dim3 grid((parts.end[parts.parts - 1] + GEMV_WARPS - 1) / GEMV_WARPS);
    dim3 block(32 * GEMV_WARPS);
    cudaStream_t st = as_stream(s);
    switch (n) {
        case 1: gemv_parts_kernel<1><<<grid, block, 0, st>>>(parts, x, k); break;
        case 2: gemv_parts_kernel<2><<<grid, block, 0, st>>>(parts, x, k); break;
        case 3: gemv_parts_kernel<3><<<grid, block, 0, st>>>(parts, x, k); break;
        case 4: gemv_parts_kernel<4><<<grid, block, 0, st>>>(parts, x, k); break;
        case 5: gemv_parts_kernel<5><<<grid, block, 0, st>>>(parts, x, k); break;
        case 6: gemv_parts_kernel<6><<<grid, block, 0, st>>>(parts, x, k); break;
        case 7: gemv_parts_kernel<7><<<grid, block, 0, st>>>(parts, x, k); break;
        default: gemv_parts_kernel<8><<<grid, block, 0, st>>>(parts, x, k); break;
    }
    LP_CHECK_LAUNCH();
}

// SwiGLU into the down projection's input (decode_fused.cu has the launch count it saves): one
// warp owns output column j of both the gate and the up product, streams both weight rows (two
// 16-byte loads of each in flight per lane, four in all, as above) and writes
// silu(gate) * up, so neither product is stored and no activation kernel runs. Each product is
// summed in exactly the order gemv_kernel sums it (per lane: vectors lane, lane + 32, ... in
// increasing order, then warp_sum) and the activation is silu_mul_kernel's expression, so the
// result matches lp_gemv_bf16 twice + lp_silu_mul bit for bit (up to nvcc's FMA contraction
// choices, the same in both); no atomics, one writer per element, launch shape from n and m only.
template <int N>
__global__ void gemv_swiglu_kernel(float* act, const float* x, const uint16_t* wg, const uint16_t* wu, int m, int k) {
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (j >= m) return;
    const uint4* gr = reinterpret_cast<const uint4*>(wg + (size_t)j * k);
    const uint4* ur = reinterpret_cast<const uint4*>(wu + (size_t)j * k);
    float g[N], u[N];
#pragma unroll
    for (int r = 0; r < N; r++) g[r] = u[r] = 0.f;
    const int vecs = k / 8;
    int i = lane;
    for (; i + 32 < vecs; i += 64) {
        const uint4 g0 = gr[i], g1 = gr[i + 32], u0 = ur[i], u1 = ur[i + 32];
        gemv_accumulate<N>(g, g0, x, k, i);
        gemv_accumulate<N>(g, g1, x, k, i + 32);
        gemv_accumulate<N>(u, u0, x, k, i);
        gemv_accumulate<N>(u, u1, x, k, i + 32);
    }
    for (; i < vecs; i += 32) {
        gemv_accumulate<N>(g, gr[i], x, k, i);
        gemv_accumulate<N>(u, ur[i], x, k, i);
    }
#pragma unroll
    for (int r = 0; r < N; r++) {
        const float gs = warp_sum(g[r]), us = warp_sum(u[r]);
        if (lane == 0) act[(size_t)r * m + j] = gs / (1.f + __expf(-gs)) * us;
    }
}

extern "C" int lp_gemv_swiglu_bf16(int n, int m, int k, const float* x, const uint16_t* wg, const uint16_t* wu, float* act,
                                   lp_stream s) {
    if (n < 1 || n > LP_GEMV_MAX_ROWS || m <= 0 || k <= 0 || k % 8 != 0 || ((uintptr_t)wg % 16) != 0 ||
        ((uintptr_t)wu % 16) != 0 || ((uintptr_t)x % 16) != 0)
        return (int)cudaErrorInvalidValue;
    dim3 grid((m + GEMV_WARPS - 1) / GEMV_WARPS);
    dim3 block(32 * GEMV_WARPS);
    cudaStream_t st = as_stream(s);
    switch (n) {
        case 1: gemv_swiglu_kernel<1><<<grid, block, 0, st>>>(act, x, wg, wu, m, k); break;
        case 2: gemv_swiglu_kernel<2><<<grid, block, 0, st>>>(act, x, wg, wu, m, k); break;
        case 3: gemv_swiglu_kernel<3><<<grid, block, 0, st>>>(act, x, wg, wu, m, k); break;
        case 4: gemv_swiglu_kernel<4><<<grid, block, 0, st>>>(act, x, wg, wu, m, k); break;
        case 5: gemv_swiglu_kernel<5><<<grid, block, 0, st>>>(act, x, wg, wu, m, k); break;
        case 6: gemv_swiglu_kernel<6><<<grid, block, 0, st>>>(act, x, wg, wu, m, k); break;
        case 7: gemv_swiglu_kernel<7><<<grid, block, 0, st>>>(act, x, wg, wu, m, k); break;
        default: gemv_swiglu_kernel<8><<<grid, block, 0, st>>>(act, x, wg, wu, m, k); break;
    }
    LP_CHECK_LAUNCH();
}

extern "C" int lp_gemv_bf16(int n, int m, int k, const float* x, const uint16_t* w, float* y, float alpha, float beta, lp_stream s) {
    // 16-byte vector loads need k % 8 == 0 and aligned rows; x rows need k % 4 == 0.
    if (n < 1 || n > LP_GEMV_MAX_ROWS || m <= 0 || k <= 0 || k % 8 != 0 || ((uintptr_t)w % 16) != 0 || ((uintptr_t)x % 16) != 0)
        return (int)cudaErrorInvalidValue;
    dim3 grid((m + GEMV_WARPS - 1) / GEMV_WARPS);
    dim3 block(32 * GEMV_WARPS);
    cudaStream_t st = as_stream(s);
    switch (n) {
        case 1: gemv_kernel<1><<<grid, block, 0, st>>>(y, x, w, m, k, alpha, beta); break;
        case 2: gemv_kernel<2><<<grid, block, 0, st>>>(y, x, w, m, k, alpha, beta); break;
        case 3: gemv_kernel<3><<<grid, block, 0, st>>>(y, x, w, m, k, alpha, beta); break;
        case 4: gemv_kernel<4><<<grid, block, 0, st>>>(y, x, w, m, k, alpha, beta); break;
        case 5: gemv_kernel<5><<<grid, block, 0, st>>>(y, x, w, m, k, alpha, beta); break;
        case 6: gemv_kernel<6><<<grid, block, 0, st>>>(y, x, w, m, k, alpha, beta); break;
        case 7: gemv_kernel<7><<<grid, block, 0, st>>>(y, x, w, m, k, alpha, beta); break;
        default: gemv_kernel<8><<<grid, block, 0, st>>>(y, x, w, m, k, alpha, beta); break;
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
