// Bias add for the architectures that have one (Qwen2 q/k/v, Llama with attention_bias).
// Programmatic dependent launch (pdl, common.cuh): it adds to the product the kernel before it
// wrote, so it waits at once.
#include "common.cuh"

__global__ void add_bias_kernel(float* x, const float* b, int dim) {
    lp_pdl_launch_dependents();
    lp_pdl_wait();
    float* row = x + (size_t)blockIdx.x * dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) row[j] += b[j];
}

extern "C" int lp_add_bias(float* x, const float* b, int rows, int dim, int pdl, lp_stream s) {
    if (rows <= 0 || dim <= 0) return (int)cudaErrorInvalidValue;
    lp_launch(add_bias_kernel, rows, 256, 0, as_stream(s), pdl, x, b, dim);
    LP_CHECK_LAUNCH();
}
