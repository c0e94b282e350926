//go:build cuda

package cuda

import (
	"strings"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// newDevice opens device 0 for the package's internal tests (newGPU's twin in cuda_test,
// which these tests cannot call), skipping when there is none.
func newDevice(t *testing.T) *Backend {
	t.Helper()
	n, err := DeviceCount()
	if err != nil || n == 0 {
		t.Skipf("no CUDA device: %v", err)
	}
	b, err := New(0)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Device discovery and properties through the driver API (gorgonia.org/cu) report what cudart
// reports: the same number of devices, and for each the same name, compute capability, SM count
// and memory.
func TestDevicePropsAgreeWithCUDART(t *testing.T) {
	n, err := DeviceCount()
	if err != nil || n == 0 {
		t.Skipf("no CUDA device: %v", err)
	}
	rn, err := cudartDeviceCount()
	if err != nil {
		t.Fatal(err)
	}
	if n != rn {
		t.Fatalf("driver API sees %d devices, cudart %d", n, rn)
	}
	for dev := range n {
		got, err := DeviceProps(dev)
		if err != nil {
			t.Fatal(err)
		}
		want, err := cudartDeviceProps(dev)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("device %d: driver API %+v, cudart %+v", dev, got, want)
		}
		if got.Name == "" || got.Major < 8 || got.SMs < 1 || got.TotalMem < 1<<30 {
			t.Errorf("device %d: implausible properties %+v", dev, got)
		}
		t.Logf("device %d: %v, %d SMs, %d MiB", dev, got, got.SMs, got.TotalMem>>20)
	}
}

// A device number the driver does not know is an error that names the devices there are, from
// DeviceProps, MemInfo and New alike, and opens nothing.
func TestDeviceOutOfRange(t *testing.T) {
	n, err := DeviceCount()
	if err != nil || n == 0 {
		t.Skipf("no CUDA device: %v", err)
	}
	for _, dev := range []int{n, n + 7, -1} {
		want := "present (0.."
		if _, err := DeviceProps(dev); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("DeviceProps(%d): %v, want an error containing %q", dev, err, want)
		}
		if _, _, err := MemInfo(dev); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("MemInfo(%d): %v, want an error containing %q", dev, err, want)
		}
		if b, err := New(dev); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New(%d) = %v, %v, want an error containing %q", dev, b, err, want)
		}
	}
}

// MemInfo (cuMemGetInfo in the primary context cudart uses) reports what cudaMemGetInfo
// reports, free <= total, and free drops by the size of a 1 GiB cudaMalloc and comes back when
// it is freed; asking leaves cudart's state on the thread intact (the backend works after).
func TestMemInfoSeesAllocations(t *testing.T) {
	b := newDevice(t)
	const slack = 64 << 20 // allocation granularity, and whatever cudart keeps for itself
	free0, total, err := MemInfo(0)
	if err != nil {
		t.Fatal(err)
	}
	rfree, rtotal, err := cudartMemInfo(0)
	if err != nil {
		t.Fatal(err)
	}
	if free0 > total || total != rtotal || absDiff(free0, rfree) > slack {
		t.Fatalf("MemInfo: free %d total %d; cudaMemGetInfo: free %d total %d", free0, total, rfree, rtotal)
	}
	if props, err := DeviceProps(0); err != nil || props.TotalMem < total {
		t.Fatalf("DeviceProps total %v (%v) < MemInfo total %d", props.TotalMem, err, total)
	}
	const gib = 1 << 30
	p, err := b.malloc(gib)
	if err != nil {
		t.Fatal(err)
	}
	free1, _, err := MemInfo(0)
	if err != nil {
		t.Fatal(err)
	}
	if drop := int64(free0) - int64(free1); drop < gib-slack || drop > gib+slack {
		t.Errorf("a 1 GiB cudaMalloc: free went from %d to %d (dropped %d MiB, want about 1024)", free0, free1, drop>>20)
	}
	b.Free(model.Tensor{Buf: dev{p}})
	free2, _, err := MemInfo(0)
	if err != nil {
		t.Fatal(err)
	}
	if absDiff(free2, free0) > slack {
		t.Errorf("after freeing the 1 GiB: free %d, before %d", free2, free0)
	}
	// cudart still works on this thread and the others (MemInfo popped what it pushed).
	x, err := b.Upload(model.HostTensor{Name: "x", DType: model.F32, Shape: []int{1, 4}, Data: make([]byte, 16)}, 1, 4)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ReadBytes(x); err != nil {
		t.Fatal(err)
	}
	b.Free(x)
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
}

func absDiff(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}
