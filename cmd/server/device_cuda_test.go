//go:build cuda

package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/cuda"
)

// --device cuda:N with N beyond the GPUs the driver sees fails before anything is opened, with
// an error that names the flag and the devices there are.
func TestDeviceCUDAOutOfRange(t *testing.T) {
	n, err := cuda.DeviceCount()
	if err != nil || n == 0 {
		t.Skipf("no CUDA device: %v", err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, dev := range []int{n, n + 3} {
		flag := fmt.Sprintf("cuda:%d", dev)
		b, _, err := openBackend(flag, 1, log)
		if err == nil {
			t.Fatalf("--device %s opened %s", flag, b.Name())
		}
		for _, want := range []string{"--device " + flag, fmt.Sprintf("%d present (0..%d)", n, n-1)} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("--device %s: %v, want it to say %q", flag, err, want)
			}
		}
	}
}

// --device cuda:N opens GPU N and logs its name, SM count and free/total memory.
func TestDeviceCUDALogsMemory(t *testing.T) {
	n, err := cuda.DeviceCount()
	if err != nil || n == 0 {
		t.Skipf("no CUDA device: %v", err)
	}
	var out strings.Builder
	log := slog.New(slog.NewTextHandler(&out, nil))
	if _, _, err := openBackend(fmt.Sprintf("cuda:%d", n-1), 1, log); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"backend ready", "sms=", "mem_free_bytes=", "mem_total_bytes="} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("startup log %q lacks %q", out.String(), want)
		}
	}
}

// autoDeviceLog is what --device auto logs in a CUDA build: the GPU backend where the driver sees
// a device, else that it took the CPU.
func autoDeviceLog() string {
	if n, err := cuda.DeviceCount(); err == nil && n > 0 {
		return `msg="backend ready" backend="cuda:0`
	}
	return "device auto: using the CPU"
}
