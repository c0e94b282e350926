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
// twice a layer). It is the same kernel with another output type and another place for the sum,
// so the bf16 values are bitwise what lp_add_rmsnorm followed by lp_f32_to_bf16 gives and next
// is the x it leaves.
#include "common.cuh"

__device__ __forceinline__ void rmsnorm_store(float* out, float v) { *out = v; }
__device__ __forceinline__ void rmsnorm_store(uint16_t* out, float v) { *out = f32_to_bf16(v); }

// rmsnorm_kernel normalises row blockIdx.x of x (plus delta with ADD, the sum written to sum:
// x itself for lp_add_rmsnorm, next for lp_rmsnorm_bf16) into out, in fp32 or bf16 (OUT).
template <bool ADD, typename OUT>
__global__ void rmsnorm_kernel(const float* x, const float* delta, float* sum, OUT* out, const float* w, int dim, float eps) {
    __shared__ float red[32];
    lp_pdl_launch_dependents();
    lp_pdl_wait();
    const float* xr = x + (size_t)blockIdx.x * dim;
    float* sr = ADD ? sum + (size_t)blockIdx.x * dim : nullptr;
    OUT* orow = out + (size_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = xr[j];
        if (ADD) {
            v += delta[(size_t)blockIdx.x * dim + j];
            sr[j] = v;
        }
        ss += v * v;
    }
    float total = block_sum(ss, red);
    float inv = rsqrtf(total / dim + eps);
    // With ADD each thread reads back only the sums it wrote itself.
    const float* src = ADD ? sr : xr;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) rmsnorm_store(orow + j, w[j] * (src[j] * inv));
}

extern "C" int lp_rmsnorm(float* out, const float* x, const float* w, int rows, int dim, float eps, int pdl, lp_stream s) {
    if (rows <= 0 || dim <= 0) return (int)cudaErrorInvalidValue;
    lp_launch(rmsnorm_kernel<false, float>, rows, 256, 0, as_stream(s), pdl, x, (const float*)nullptr, (float*)nullptr, out, w, dim,
              eps);
    LP_CHECK_LAUNCH();
}

extern "C" int lp_add_rmsnorm(float* x, const float* delta, float* out, const float* w, int rows, int dim, float eps, int pdl,
                              lp_stream s) {
    if (rows <= 0 || dim <= 0) return (int)cudaErrorInvalidValue;
    lp_launch(rmsnorm_kernel<true, float>, rows, 256, 0, as_stream(s), pdl, (const float*)x, delta, x, out, w, dim, eps);
    LP_CHECK_LAUNCH();
}

extern "C" int lp_rmsnorm_bf16(const float* x, const float* delta, float* next, uint16_t* out, const float* w, int rows, int dim,
                               float eps, lp_stream s) {
    if (rows <= 0 || dim <= 0 || (delta != nullptr) != (next != nullptr)) return (int)cudaErrorInvalidValue;
    if (delta)
        rmsnorm_kernel<true, uint16_t><<<rows, 256, 0, as_stream(s)>>>(x, delta, next, out, w, dim, eps);
    else
        rmsnorm_kernel<false, uint16_t><<<rows, 256, 0, as_stream(s)>>>(x, nullptr, nullptr, out, w, dim, eps);
    LP_CHECK_LAUNCH();
}
