// RMSNorm, alone and fused with the residual add that precedes it in every decoder layer
// (x += delta; out = norm(x)): the fused form reads x once instead of three times.
// One block per row; the mean of squares is accumulated in fp32 like HF's LlamaRMSNorm.
// Programmatic dependent launch (pdl, common.cuh): it reads x first, so it waits at once.
#include "common.cuh"

template <bool ADD>
__global__ void rmsnorm_kernel(float* x, const float* delta, float* out, const float* w, int dim, float eps) {
    __shared__ float red[32];
    lp_pdl_launch_dependents();
    lp_pdl_wait();
    float* xr = x + (size_t)blockIdx.x * dim;
    float* orow = out + (size_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = xr[j];
        if (ADD) {
            v += delta[(size_t)blockIdx.x * dim + j];
            xr[j] = v;
        }
        ss += v * v;
    }
    float total = block_sum(ss, red);
    float inv = rsqrtf(total / dim + eps);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) orow[j] = w[j] * (xr[j] * inv);
}

extern "C" int lp_rmsnorm(float* out, const float* x, const float* w, int rows, int dim, float eps, int pdl, lp_stream s) {
    if (rows <= 0 || dim <= 0) return (int)cudaErrorInvalidValue;
    // x is not written without ADD; the cast only shares the kernel.
    lp_launch(rmsnorm_kernel<false>, rows, 256, 0, as_stream(s), pdl, (float*)x, nullptr, out, w, dim, eps);
    LP_CHECK_LAUNCH();
}

extern "C" int lp_add_rmsnorm(float* x, const float* delta, float* out, const float* w, int rows, int dim, float eps, int pdl,
                              lp_stream s) {
    if (rows <= 0 || dim <= 0) return (int)cudaErrorInvalidValue;
    lp_launch(rmsnorm_kernel<true>, rows, 256, 0, as_stream(s), pdl, x, delta, out, w, dim, eps);
    LP_CHECK_LAUNCH();
}
