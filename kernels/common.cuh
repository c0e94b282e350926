// Helpers shared by the kernels.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include "loraplex_kernels.h"
#include "shapes.h"

#define LP_CHECK_LAUNCH() return (int)cudaGetLastError()

__device__ __forceinline__ float bf16_to_f32(uint16_t v) {
    return __uint_as_float(((uint32_t)v) << 16);
}

// Round to nearest even, as torch does when casting float32 to bfloat16.
__device__ __forceinline__ uint16_t f32_to_bf16(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// block_sum reduces over a block of up to 1024 threads; every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float* shared32) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    float t = lane < warps ? shared32[lane] : 0.f;
    t = warp_sum(t);
    __syncthreads();
    return t;
}

static inline cudaStream_t as_stream(lp_stream s) { return (cudaStream_t)s; }
