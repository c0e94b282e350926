// Writes this step's keys and values into the paged bf16 cache: row i goes to slot slots[i]
// (page * page_size + offset), so sequences can own pages anywhere in the pool.
#include "common.cuh"

__global__ void store_kv_kernel(uint16_t* kc, uint16_t* vc, const float* k, const float* v, const int32_t* slots, int width) {
    size_t dst = (size_t)slots[blockIdx.x] * width, src = (size_t)blockIdx.x * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        kc[dst + j] = f32_to_bf16(k[src + j]);
        vc[dst + j] = f32_to_bf16(v[src + j]);
    }
}

extern "C" int lp_store_kv(uint16_t* kcache, uint16_t* vcache, const float* k, const float* v, const int32_t* slots, int n, int width, lp_stream s) {
    if (n <= 0 || width <= 0) return (int)cudaErrorInvalidValue;
    store_kv_kernel<<<n, 256, 0, as_stream(s)>>>(kcache, vcache, k, v, slots, width);
    LP_CHECK_LAUNCH();
}
