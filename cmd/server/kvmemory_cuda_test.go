//go:build cuda

package main

import (
	"context"
	"io"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/cuda"
)

// On a GPU the KV cache gets --gpu-memory-utilization of the device's memory, less what is in
// use after loading and what workspaces and adapter slots will take: the startup log says so and
// the cache stays inside the share; a share smaller than what is already in use fails startup
// naming the flag.
func TestKVCacheSizedFromGPUMemory(t *testing.T) {
	n, err := cuda.DeviceCount()
	if err != nil || n == 0 {
		t.Skipf("no CUDA device: %v", err)
	}
	dir := filepath.Join("..", "..", "testdata", "models", "llama")
	_, logs, stop := start(t, "--model", dir, "--device", "cuda:0", "--gpu-memory-utilization", "0.05")
	defer stop()
	m := regexp.MustCompile(`kv_cache_bytes=(\d+) kv_cache_from="--gpu-memory-utilization 0.05 of (\d+) bytes`).FindStringSubmatch(logs.String())
	if m == nil {
		t.Fatalf("startup log lacks the GPU sizing:\n%s", logs)
	}
	kv, _ := strconv.ParseInt(m[1], 10, 64)
	total, _ := strconv.ParseInt(m[2], 10, 64)
	if kv <= 0 || kv > total/20 {
		t.Errorf("KV cache of %d bytes for 0.05 of %d", kv, total)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	err = run(context.Background(), []string{"--model", dir, "--device", "cuda:0", "--http-addr", "127.0.0.1:0", "--gpu-memory-utilization", "0.001"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "raise --gpu-memory-utilization") {
		t.Errorf("--gpu-memory-utilization 0.001: %v, want a refusal naming the flag", err)
	}
}
