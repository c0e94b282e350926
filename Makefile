# loraplex build helpers. The CPU build needs nothing but Go: `go build ./...`.
# `make cuda` compiles the CUDA kernels with nvcc and builds everything with the `cuda` tag.

CUDA_HOME ?= /usr/local/cuda
NVCC ?= $(CUDA_HOME)/bin/nvcc
# sm_80 (A100), sm_90 (H100/H200) and PTX for newer GPUs.
CUDA_ARCHS ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVCC_FLAGS ?= -O3 -std=c++17 -Xcompiler -fPIC $(CUDA_ARCHS)

KERNEL_SRC := $(wildcard kernels/*.cu)
KERNEL_OBJ := $(patsubst kernels/%.cu,kernels/build/%.o,$(KERNEL_SRC))
KERNEL_LIB := kernels/build/libloraplex_kernels.a

export CGO_LDFLAGS := -L$(CUDA_HOME)/lib64 $(CGO_LDFLAGS)

.PHONY: cuda kernels test test-cuda clean

kernels: $(KERNEL_LIB)

kernels/build/%.o: kernels/%.cu kernels/*.h kernels/*.cuh
	@mkdir -p kernels/build
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

$(KERNEL_LIB): $(KERNEL_OBJ)
	ar rcs $@ $^

cuda: $(KERNEL_LIB)
	go build -tags cuda -o bin/loraplex ./cmd/server

test:
	go test -race ./...

test-cuda: $(KERNEL_LIB)
	go test -tags cuda -count=1 ./cuda/... ./model/... ./serve/...

clean:
	rm -rf kernels/build bin
