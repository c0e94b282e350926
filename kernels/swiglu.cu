// SwiGLU activation: silu(gate) * up, silu(g) = g / (1 + e^-g).
#include "common.cuh"

__global__ void silu_mul_kernel(float* out, const float* gate, const float* up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = g / (1.f + __expf(-g)) * up[i];
    }
}

extern "C" int lp_silu_mul(float* out, const float* gate, const float* up, size_t n, lp_stream s) {
    if (n == 0) return 0;
    int blocks = (int)((n + 255) / 256 < 65535 ? (n + 255) / 256 : 65535);
    silu_mul_kernel<<<blocks, 256, 0, as_stream(s)>>>(out, gate, up, n);
    LP_CHECK_LAUNCH();
}
