// Skinny products: y[n, m] = X[n, k] · W[m, k]ᵀ for at most LP_SKINNY_MAX_COLS outputs (a
// router's gate: 28 experts) at more rows than the GEMV takes, X and W bf16, fp32 accumulate.
//
// cuBLAS runs such a product (64 x 28 x 4,096) as a 32x32 wmma tile kernel with split-K plus a
// second launch that reduces the splits, ~5 us each: a routed batch-64 decode layer's seven gate
// products took ~78 us of it, ~2.5 ms of a 12.8 ms step (goals-2026-12-07-s27a call 2, Nsight).
// The product itself is 0.23 MB of weights and 0.5 MB of X, a few microseconds at any kernel's
// latency, so one launch that keeps enough loads in flight is the whole job:
//   a block takes SKINNY_COLS outputs x SKINNY_ROWS rows, one warp per (output, k-quarter);
//   each lane walks its quarter in 16-byte vectors (8 bf16) of W's row and of the block's rows
//   of X (every warp of the block reads the same X rows: L1/L2 hits), one fp32 partial per row
//   in registers, then a warp_sum; the quarters meet in shared memory and are added in quarter
//   order.
// Determinism: no atomics and a fixed order (lanes, shuffle tree, quarters), so a launch and its
// graph replay agree bitwise, and a row's sums read only that row, the same whatever the batch.
// Tolerance: the sums are cuBLAS's products in another order (a few ulp of a logit), which the
// tests bound against a float64 product of the same bf16 inputs.
#include "common.cuh"

constexpr int SKINNY_COLS = 4, SKINNY_ROWS = 8, SKINNY_SPLITS = 4;  // 16 warps

// Parts (lp_gemm_skinny_parts_bf16): the gates of projections that share an input (q/k/v's three,
// gate/up's two) are one launch whose columns are the parts' columns end to end, as
// lp_gemv_parts lays them out. A warp finds its column's part by walking end[] (at most
// LP_GEMV_PARTS compares); a block's four columns may span two parts, which changes nothing
// since every column is its own warp's and every store looks its part up again. A column's sums
// are the same whichever launch (one part or several) computes it.
__device__ __forceinline__ int skinny_part(const lp_gemv_parts& p, int col) {
    int g = 0;
    while (g < p.parts - 1 && col >= p.end[g]) g++;
    return g;
}

__global__ void __launch_bounds__(32 * SKINNY_COLS * SKINNY_SPLITS)
    gemm_skinny_kernel(const uint16_t* x, const lp_gemv_parts p, int n, int k) {
    __shared__ float part[SKINNY_SPLITS][SKINNY_COLS][SKINNY_ROWS];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int c = warp % SKINNY_COLS, q = warp / SKINNY_COLS;
    const int total = p.end[p.parts - 1];
    const int col = blockIdx.x * SKINNY_COLS + c, row0 = blockIdx.y * SKINNY_ROWS;
    const int rows = min(SKINNY_ROWS, n - row0);  // the same for the whole block
    const int k8 = k / 8, per = (k8 + SKINNY_SPLITS - 1) / SKINNY_SPLITS;
    const int v0 = q * per, v1 = min(k8, v0 + per);
    float acc[SKINNY_ROWS];
#pragma unroll
    for (int r = 0; r < SKINNY_ROWS; r++) acc[r] = 0.f;
    if (col < total) {
        const int g = skinny_part(p, col), first = g ? p.end[g - 1] : 0;
        const uint4* w4 = reinterpret_cast<const uint4*>(p.w[g] + (size_t)(col - first) * k);
        const uint4* x4 = reinterpret_cast<const uint4*>(x + (size_t)row0 * k);
#pragma unroll 2
        for (int v = v0 + lane; v < v1; v += 32) {
            float wf[8];
            bf16x8_unpack(w4[v], wf);
#pragma unroll
            for (int r = 0; r < SKINNY_ROWS; r++) {
                if (r >= rows) break;
                float xf[8];
                bf16x8_unpack(x4[(size_t)r * k8 + v], xf);
#pragma unroll
                for (int j = 0; j < 8; j++) acc[r] += xf[j] * wf[j];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < SKINNY_ROWS; r++) {
        const float s = warp_sum(acc[r]);
        if (lane == 0) part[q][c][r] = s;
    }
    __syncthreads();
    if (threadIdx.x < SKINNY_COLS * SKINNY_ROWS) {
        const int cc = threadIdx.x / SKINNY_ROWS, r = threadIdx.x % SKINNY_ROWS;
        const int oc = blockIdx.x * SKINNY_COLS + cc;
        if (oc < total && r < rows) {
            float s = part[0][cc][r];
#pragma unroll
            for (int qq = 1; qq < SKINNY_SPLITS; qq++) s += part[qq][cc][r];
            const int g = skinny_part(p, oc), first = g ? p.end[g - 1] : 0, m = p.end[g] - first;
            p.y[g][(size_t)(row0 + r) * m + (oc - first)] = s;
        }
    }
}

extern "C" int lp_gemm_skinny_parts_bf16(const uint16_t* x, lp_gemv_parts p, int n, int k, lp_stream s) {
    if (n <= 0 || k <= 0 || k % 8 != 0 || n > LP_SKINNY_MAX_ROWS || p.parts < 1 || p.parts > LP_GEMV_PARTS ||
        reinterpret_cast<uintptr_t>(x) % 16 != 0)
        return (int)cudaErrorInvalidValue;
    for (int g = 0, prev = 0; g < p.parts; prev = p.end[g], g++) {
        if (p.end[g] - prev < 1 || p.end[g] - prev > LP_SKINNY_MAX_COLS || p.w[g] == nullptr || p.y[g] == nullptr ||
            p.wsrc[g] != nullptr || p.wtab[g] != nullptr || reinterpret_cast<uintptr_t>(p.w[g]) % 16 != 0)
            return (int)cudaErrorInvalidValue;
    }
    const int total = p.end[p.parts - 1];
    const dim3 grid((total + SKINNY_COLS - 1) / SKINNY_COLS, (n + SKINNY_ROWS - 1) / SKINNY_ROWS);
    gemm_skinny_kernel<<<grid, 32 * SKINNY_COLS * SKINNY_SPLITS, 0, as_stream(s)>>>(x, p, n, k);
    LP_CHECK_LAUNCH();
}

extern "C" int lp_gemm_skinny_bf16(float* y, const uint16_t* x, const uint16_t* w, int n, int m, int k, lp_stream s) {
    lp_gemv_parts p = {};
    p.w[0] = w, p.y[0] = y, p.end[0] = m, p.parts = 1;
    return lp_gemm_skinny_parts_bf16(x, p, n, k, s);
}
