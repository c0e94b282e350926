// SwiGLU activation: silu(gate) * up, silu(g) = g / (1 + e^-g).
//
// lp_silu_mul_bf16 also writes the activation rounded to bf16 (f32_to_bf16, lp_f32_to_bf16's
// rounding), for the down projection on the tensor cores (model.SiLUMulMatMuler, cuda/fused.go):
// the GEMM reads the bf16 copy this kernel wrote instead of a conversion pass reading the fp32
// activation again. At a 2,048-row prefill step of the Llama-3-8B shape the activation is
// [2,048, 14,336]: the pass it saves reads 117 MB and writes 58 MB a layer, and this kernel
// writes those 58 MB itself. Every element is the arithmetic of silu_mul_kernel (silu_value),
// so the fp32 output is bitwise lp_silu_mul's and the bf16 copy bitwise what the conversion
// gives from it. Four elements a thread (16-byte loads and stores) when n % 4 == 0 and every
// pointer is aligned; otherwise one. No reductions: deterministic, and replays in a graph
// like any elementwise launch.
#include "common.cuh"

__global__ void silu_mul_kernel(float* out, const float* gate, const float* up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = silu_value(gate[i], up[i]);
}

__global__ void silu_mul_bf16_kernel(float* out, uint16_t* out_bf16, const float* gate, const float* up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float v = silu_value(gate[i], up[i]);
        out[i] = v;
        out_bf16[i] = f32_to_bf16(v);
    }
}

__global__ void silu_mul_bf16_vec_kernel(float4* out, uint2* out_bf16, const float4* gate, const float4* up, size_t n4) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        const float4 g = gate[i], u = up[i];
        const float4 v = make_float4(silu_value(g.x, u.x), silu_value(g.y, u.y), silu_value(g.z, u.z), silu_value(g.w, u.w));
        out[i] = v;
        out_bf16[i] = make_uint2((uint32_t)f32_to_bf16(v.x) | ((uint32_t)f32_to_bf16(v.y) << 16),
                                 (uint32_t)f32_to_bf16(v.z) | ((uint32_t)f32_to_bf16(v.w) << 16));
    }
}

extern "C" int lp_silu_mul(float* out, const float* gate, const float* up, size_t n, lp_stream s) {
    if (n == 0) return 0;
    int blocks = (int)((n + 255) / 256 < 65535 ? (n + 255) / 256 : 65535);
    silu_mul_kernel<<<blocks, 256, 0, as_stream(s)>>>(out, gate, up, n);
    LP_CHECK_LAUNCH();
}

extern "C" int lp_silu_mul_bf16(float* out, uint16_t* out_bf16, const float* gate, const float* up, size_t n, lp_stream s) {
    if (n == 0) return 0;
    const bool vec = n % 4 == 0 && ((uintptr_t)out | (uintptr_t)gate | (uintptr_t)up) % 16 == 0 && (uintptr_t)out_bf16 % 8 == 0;
    const size_t items = vec ? n / 4 : n;
    const int blocks = (int)((items + 255) / 256 < 65535 ? (items + 255) / 256 : 65535);
    if (vec)
        silu_mul_bf16_vec_kernel<<<blocks, 256, 0, as_stream(s)>>>(reinterpret_cast<float4*>(out), reinterpret_cast<uint2*>(out_bf16),
                                                                   reinterpret_cast<const float4*>(gate),
                                                                   reinterpret_cast<const float4*>(up), items);
    else
        silu_mul_bf16_kernel<<<blocks, 256, 0, as_stream(s)>>>(out, out_bf16, gate, up, n);
    LP_CHECK_LAUNCH();
}
