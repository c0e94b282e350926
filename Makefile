# loraplex build helpers. The CPU build needs nothing but Go: `go build ./...`.
# `make cuda` compiles the CUDA kernels with nvcc and builds everything with the `cuda` tag.

SHELL := /bin/bash
CUDA_HOME ?= /usr/local/cuda
NVCC ?= $(CUDA_HOME)/bin/nvcc
# sm_80 (A100), sm_90 (H100/H200) and PTX for newer GPUs.
CUDA_ARCHS ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVCC_FLAGS ?= -O3 -std=c++17 -Xcompiler -fPIC $(CUDA_ARCHS)

KERNEL_SRC := $(wildcard kernels/*.cu)
KERNEL_OBJ := $(patsubst kernels/%.cu,kernels/build/%.o,$(KERNEL_SRC))
KERNEL_LIB := kernels/build/libloraplex_kernels.a

export CGO_LDFLAGS := -L$(CUDA_HOME)/lib64 $(CGO_LDFLAGS)

# The cgo flags of a CUDA build. gorgonia.org/cu (device discovery, properties and free memory:
# cuda/device.go) compiles against the toolkit's cuda.h with cuda/cu13compat.h force-included
# (CUDA 13 changed five driver functions cu calls; cgo offers no other way into another module's
# C), and links the driver API, libcuda (the toolkit's link stub where the driver's libcuda.so is
# not on the linker's path; the driver's libcuda.so.1 is loaded at run time). Only the CUDA
# targets set them: the CPU build needs no CUDA headers. For go test/run/build -tags cuda by
# hand: eval "$$(make -s cuda-env)".
CUDA_CGO_CFLAGS := -g -O2 -I$(CUDA_HOME)/include -include $(CURDIR)/cuda/cu13compat.h
CUDA_CGO_LDFLAGS := -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/lib64/stubs -lcuda
cuda test-cuda: export CGO_CFLAGS := $(CUDA_CGO_CFLAGS) $(CGO_CFLAGS)
cuda test-cuda: export CGO_LDFLAGS := $(CUDA_CGO_LDFLAGS) $(CGO_LDFLAGS)

.PHONY: cuda cuda-env kernels test lint test-tools test-deploy-check test-cuda clean

kernels: $(KERNEL_LIB)

kernels/build/%.o: kernels/%.cu kernels/*.h kernels/*.cuh
	@mkdir -p kernels/build
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

$(KERNEL_LIB): $(KERNEL_OBJ)
	ar rcs $@ $^

cuda: $(KERNEL_LIB)
	go build -tags cuda -o bin/loraplex ./cmd/server

cuda-env:
	@echo "export CGO_CFLAGS='$(CUDA_CGO_CFLAGS) $(CGO_CFLAGS)'"
	@echo "export CGO_LDFLAGS='$(CUDA_CGO_LDFLAGS) $(CGO_LDFLAGS)'"

# The whole CPU test suite, what CI runs (.ci/run): installs the tools the deploy checks need,
# then vet, build and race-enabled tests of this module, then the deploy/check module (Helm chart
# rendering and strict Kubernetes/Gateway API decoding, Dockerfile lint), which is a module of its
# own so that its Kubernetes, Helm and BuildKit dependencies stay out of go.mod.
test: test-tools lint
	CGO_ENABLED=0 go build ./...
	go test -race ./...
	$(MAKE) test-deploy-check

# Hygiene that fails the build: gofmt, go vet, staticcheck, and deadcode (functions no program
# reaches). deadcode sees the untagged build only, so what only tests or the cuda build call is
# listed, with the reason, in .deadcode-allow; anything else it reports is an error.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
DEADCODE := golang.org/x/tools/cmd/deadcode@v0.52.0
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt -l: these files are not formatted:"; echo "$$out"; exit 1; fi
	go vet ./...
	go run $(STATICCHECK) ./...
	@go run $(DEADCODE) ./... > .deadcode.out; \
		unexpected=$$(awk '{split($$1, a, ":"); d = a[1]; sub(/\/[^\/]*$$/, "", d); print d "." $$NF}' .deadcode.out | \
			grep -vxE -f <(grep -v '^#' .deadcode-allow | awk 'NF{print $$1}') || true); \
		rm -f .deadcode.out; \
		if [ -n "$$unexpected" ]; then echo "deadcode: unreachable functions (remove them, or list them in .deadcode-allow with the reason):"; echo "$$unexpected"; exit 1; fi
	@echo "lint: gofmt, vet, staticcheck, deadcode clean"

test-deploy-check:
	cd deploy/check && go vet ./... && go test ./...

# promtool and prometheus (Debian's prometheus package) for deploy/'s TestPromtool and
# TestLivePrometheus. Installed when missing and apt-get can run (as root); otherwise those
# tests skip and say so. An install that is possible but fails stops the run.
test-tools:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then \
		echo "test-tools: promtool and prometheus are on PATH"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "test-tools: installing Debian's prometheus package (promtool, prometheus)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || \
			{ apt-get update -q && apt-get install -y -q --no-install-recommends prometheus; } || exit 1; \
		command -v promtool >/dev/null && command -v prometheus >/dev/null || \
			{ echo "test-tools: prometheus installed but promtool/prometheus not on PATH"; exit 1; }; \
	else \
		echo "test-tools: SKIP: promtool/prometheus are not on PATH and apt-get cannot run here (not root)," \
			"so deploy's TestPromtool and TestLivePrometheus will skip; install Debian's prometheus package to run them"; \
	fi

test-cuda: $(KERNEL_LIB)
	go test -tags cuda -count=1 ./cuda/... ./model/... ./serve/...
	go test -tags cuda -count=1 -run 'TestDeviceCUDA|TestKVCacheSizedFromGPUMemory|TestRunDemo' ./cmd/server/

clean:
	rm -rf kernels/build bin
