// CUDA graphs: a decode step is ~20 launches per layer, and at batch 1 the host cost of
// launching them is larger than the GPU time of the step. Recording the launches of a step
// once and replaying them makes the whole step one launch.
//
// Capture uses cudaStreamCaptureModeRelaxed so other host threads (adapter uploads) may keep
// calling cudaMalloc/cudaMemcpy while a step is being recorded.
#include <cublas_v2.h>
#include "common.cuh"

extern "C" {

int lp_capture_begin(lp_stream s) { return (int)cudaStreamBeginCapture(as_stream(s), cudaStreamCaptureModeRelaxed); }

// lp_capture_end ends the capture; with keep != 0 it instantiates the graph into *exec.
int lp_capture_end(lp_stream s, int keep, void** exec) {
    cudaGraph_t g = nullptr;
    cudaError_t e = cudaStreamEndCapture(as_stream(s), &g);
    if (e != cudaSuccess) return (int)e;
    if (keep) {
        cudaGraphExec_t x = nullptr;
        e = cudaGraphInstantiateWithFlags(&x, g, 0);
        *exec = (void*)x;
    }
    cudaGraphDestroy(g);
    return (int)e;
}

int lp_graph_launch(void* exec, lp_stream s) { return (int)cudaGraphLaunch((cudaGraphExec_t)exec, as_stream(s)); }
int lp_graph_destroy(void* exec) { return (int)cudaGraphExecDestroy((cudaGraphExec_t)exec); }

// cuBLAS must not allocate its workspace inside a capture: give it one up front.
int lp_cublas_set_workspace(void* handle, void* ws, size_t bytes) {
    cublasStatus_t st = cublasSetWorkspace((cublasHandle_t)handle, ws, bytes);
    return st == CUBLAS_STATUS_SUCCESS ? 0 : 1000 + (int)st;
}

}  // extern "C"
