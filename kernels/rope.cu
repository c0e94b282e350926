// Rotary position embedding, rotate-half convention (HF Llama): the first and second halves of
// a head are the real and imaginary parts. One block per (token, head) row.
#include "common.cuh"

__global__ void rope_kernel(float* x, const int32_t* positions, const float* table, int heads, int dim) {
    int half = dim / 2;
    float* row = x + (size_t)blockIdx.x * dim;
    const float* t = table + (size_t)positions[blockIdx.x / heads] * dim;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float c = t[j], s = t[half + j];
        float a = row[j], b = row[j + half];
        row[j] = a * c - b * s;
        row[j + half] = b * c + a * s;
    }
}

extern "C" int lp_rope(float* x, const int32_t* positions, const float* table, int rows, int heads, int dim, lp_stream s) {
    if (rows <= 0 || heads <= 0 || !lp_head_dim_ok(dim)) return (int)cudaErrorInvalidValue;
    rope_kernel<<<rows, 64, 0, as_stream(s)>>>(x, positions, table, heads, dim);
    LP_CHECK_LAUNCH();
}
