// Package cuda is the NVIDIA GPU model.Backend. It is the only package that uses cgo, and it is
// built only with the `cuda` build tag: every other package builds and tests without a GPU or
// the CUDA toolkit.
//
// The kernels live in ../kernels as CUDA C with C launchers (no Go knowledge); `make cuda`
// compiles them with nvcc into kernels/build/libloraplex_kernels.a, which this package links
// together with cudart and cuBLAS. kernels/loraplex_kernels.h is the whole C interface (every
// function, struct and limit; shims.h holds only the Go-side casts over it). Devices, their
// properties and free memory come from the driver API through gorgonia.org/cu (device.go),
// built with the Makefile's CUDA cgo flags (cu13compat.h). Shapes are checked here, in Go,
// before any call crosses into C; errors come back only as CUDA status codes. The first failure is sticky: every later
// op is skipped, Read returns it, and Err reports it so health can say NOT_SERVING.
//
// Storage: activations fp32; weight matrices, the paged KV cache and LoRA matrices bf16
// (weights given as F32 or F16 are rounded to bf16 on upload); norm weights and biases fp32.
// GEMMs run on tensor cores in bf16 with fp32 accumulation through cuBLAS.
//
// Alternative kernel paths are chosen per backend, by environment variables read in New and by
// setters for tests and benchmarks: LORAPLEX_PREFILL_ATTENTION (backend.go); LORAPLEX_FUSED_DECODE,
// LORAPLEX_LORA_GROUP, LORAPLEX_LORA_WIDE, LORAPLEX_ROUTED_WIDE, LORAPLEX_ROUTED_FUSED, LORAPLEX_ROUTED_GROUP, LORAPLEX_ROUTED_FOLD,
// LORAPLEX_NORM_GEMV, LORAPLEX_NORM_BF16, LORAPLEX_NORM_KEEP, LORAPLEX_LORA_SWIGLU, LORAPLEX_LORA_ROPE, LORAPLEX_NORM_VEC, LORAPLEX_SWIGLU_BF16, LORAPLEX_PDL (programmatic dependent launch) and
// LORAPLEX_GEMV_DEEP, LORAPLEX_GEMV_STREAM, LORAPLEX_NORM_STAGE, LORAPLEX_NORM_STAGE_PAIR, LORAPLEX_LORA_FOLD (fused.go, which lists them with their defaults' measurements);
// LORAPLEX_SEGMENT_KEEP and LORAPLEX_SEGMENT_MERGE (graph.go); LORAPLEX_GEMM_SKINNY (ops.go); LORAPLEX_ROUTE_STAGED and LORAPLEX_ROUTED_EXPERT_MAJOR (route.go);
// LORAPLEX_DECODE_SPLIT, LORAPLEX_DECODE_DEEP, LORAPLEX_GQ_FILL_CHUNK, LORAPLEX_GROUPED_DECODE, LORAPLEX_PREFILL_SPLIT and LORAPLEX_PREFILL_WIDE
// (attention.go); LORAPLEX_DETERMINISTIC_GEMM, LORAPLEX_DETERMINISTIC_SMALL and
// LORAPLEX_DETERMINISTIC_WIDE (deterministic.go).
package cuda
