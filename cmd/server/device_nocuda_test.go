//go:build !cuda

package main

import (
	"context"
	"io"
	"strings"
	"testing"
)

// A binary built without CUDA refuses --device cuda and cuda:N, naming the build, rather than
// serving from the CPU a hundred times slower than asked.
func TestDeviceCUDAWithoutCUDA(t *testing.T) {
	for _, dev := range []string{"cuda", "cuda:1"} {
		err := run(context.Background(), []string{"--device", dev}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "without CUDA support") {
			t.Errorf("--device %s: error %v, want one saying the binary has no CUDA support", dev, err)
		}
	}
}

// autoDeviceLog is what --device auto logs in a build without CUDA: that it took the CPU.
func autoDeviceLog() string { return "device auto: using the CPU" }
