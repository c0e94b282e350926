// RMSNorm, alone and fused with the residual add that precedes it in every decoder layer
// (x += delta; out = norm(x)): the fused form reads x once instead of three times.
// One block per row; the mean of squares is accumulated in fp32 like HF's LlamaRMSNorm.
// Programmatic dependent launch (pdl, common.cuh): it reads x first, so it waits at once.
//
// lp_rmsnorm_bf16 is the same norm (and residual add) for steps whose next products run on
// cuBLAS (cuda/fused.go NormMatMulShared, LORAPLEX_NORM_BF16): it writes the normed rows rounded
// to bf16 (f32_to_bf16, lp_f32_to_bf16's rounding) straight into the GEMMs' input and never
// stores them in fp32, and the residual x + delta goes to next instead of over x (NormFuser's
// contract: the caller swaps the two buffers). The conversion pass it replaces read the fp32
// normed rows again (at a 2,048-row prefill step of the 8B shape, 32 MB read and 16 MB written,
// twice a layer). Each row's sum of squares is the kernel above's (the same 256 threads, the
// same strides, block_sum), and each element the same expression, so the bf16 values are
// bitwise what lp_add_rmsnorm followed by lp_f32_to_bf16 gives and next is its x.
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

template <bool ADD>
__global__ void rmsnorm_bf16_kernel(const float* x, const float* delta, float* next, uint16_t* out, const float* w, int dim,
                                    float eps) {
    __shared__ float red[32];
    const float* xr = x + (size_t)blockIdx.x * dim;
    float* nr = next + (size_t)blockIdx.x * dim;
    uint16_t* orow = out + (size_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = xr[j];
        if (ADD) {
            v += delta[(size_t)blockIdx.x * dim + j];
            nr[j] = v;
        }
        ss += v * v;
    }
    float total = block_sum(ss, red);
    float inv = rsqrtf(total / dim + eps);
    // With ADD each thread reads back only the elements it wrote itself.
    const float* src = ADD ? nr : xr;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) orow[j] = f32_to_bf16(w[j] * (src[j] * inv));
}

extern "C" int lp_rmsnorm_bf16(const float* x, const float* delta, float* next, uint16_t* out, const float* w, int rows, int dim,
                               float eps, lp_stream s) {
    if (rows <= 0 || dim <= 0 || (delta != nullptr) != (next != nullptr)) return (int)cudaErrorInvalidValue;
    if (delta)
        rmsnorm_bf16_kernel<true><<<rows, 256, 0, as_stream(s)>>>(x, delta, next, out, w, dim, eps);
    else
        rmsnorm_bf16_kernel<false><<<rows, 256, 0, as_stream(s)>>>(x, nullptr, nullptr, out, w, dim, eps);
    LP_CHECK_LAUNCH();
}
