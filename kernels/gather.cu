// Row gather: picks the rows whose logits are wanted before the vocabulary GEMM.
// Programmatic dependent launch (pdl, common.cuh): it reads x first, so it waits at once.
#include "common.cuh"

__global__ void gather_rows_kernel(float* out, const float* x, const int32_t* rows, int dim) {
    lp_pdl_launch_dependents();
    lp_pdl_wait();
    const float* src = x + (size_t)rows[blockIdx.x] * dim;
    float* dst = out + (size_t)blockIdx.x * dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) dst[j] = src[j];
}

extern "C" int lp_gather_rows(float* out, const float* x, const int32_t* rows, int n, int dim, int pdl, lp_stream s) {
    if (n <= 0) return 0;
    lp_launch(gather_rows_kernel, n, 256, 0, as_stream(s), pdl, out, x, rows, dim);
    LP_CHECK_LAUNCH();
}
