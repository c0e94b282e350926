// fp32 <-> bf16 conversion: activations are fp32, GEMM inputs bf16.
#include "common.cuh"

__global__ void f32_to_bf16_kernel(uint16_t* dst, const float* src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = f32_to_bf16(src[i]);
}

__global__ void bf16_to_f32_kernel(float* dst, const uint16_t* src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = bf16_to_f32(src[i]);
}

static int grid_for(size_t n) { return (int)((n + 255) / 256 < 65535 ? (n + 255) / 256 : 65535); }

extern "C" int lp_f32_to_bf16(uint16_t* dst, const float* src, size_t n, lp_stream s) {
    if (n == 0) return 0;
    f32_to_bf16_kernel<<<grid_for(n), 256, 0, as_stream(s)>>>(dst, src, n);
    LP_CHECK_LAUNCH();
}

extern "C" int lp_bf16_to_f32(float* dst, const uint16_t* src, size_t n, lp_stream s) {
    if (n == 0) return 0;
    bf16_to_f32_kernel<<<grid_for(n), 256, 0, as_stream(s)>>>(dst, src, n);
    LP_CHECK_LAUNCH();
}
