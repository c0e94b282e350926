//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"fmt"
	"runtime"

	"gorgonia.org/cu"
)

// Devices, their properties and their memory, through gorgonia.org/cu (the CUDA driver API):
// what Go owns on the device side. Kernels, copies and allocations still go through the C
// launchers and cudart (kernels/loraplex_kernels.h); nothing here is on the hot path.
//
// cudart and the driver API share each device's primary context. Device counts, attributes and
// cuDeviceTotalMem need no context; cuMemGetInfo needs a current one, and MemInfo makes the
// primary context (the one cudart uses, never one of its own) current for that one call.

// DeviceInfo describes a CUDA device as the driver reports it.
type DeviceInfo struct {
	Index        int
	Name         string
	Major, Minor int    // compute capability
	SMs          int    // streaming multiprocessors
	TotalMem     uint64 // bytes
}

// String is the device's name and architecture, e.g. "NVIDIA H200 (sm_90)".
func (d DeviceInfo) String() string { return fmt.Sprintf("%s (sm_%d%d)", d.Name, d.Major, d.Minor) }

// DeviceCount reports how many CUDA devices the driver sees.
func DeviceCount() (int, error) {
	n, err := cu.NumDevices()
	if err != nil {
		return 0, fmt.Errorf("cuda: device count: %w", err)
	}
	return n, nil
}

// cuDevice returns the driver's handle of GPU number dev, or an error that says which numbers
// exist.
func cuDevice(dev int) (cu.Device, error) {
	n, err := DeviceCount()
	if err != nil {
		return 0, err
	}
	switch {
	case n == 0:
		return 0, fmt.Errorf("cuda: device %d requested, no CUDA device present", dev)
	case dev < 0 || dev >= n:
		return 0, fmt.Errorf("cuda: device %d requested, %d present (0..%d)", dev, n, n-1)
	}
	d, err := cu.GetDevice(dev)
	if err != nil {
		return 0, fmt.Errorf("cuda: device %d: %w", dev, err)
	}
	return d, nil
}

// DeviceProps reports GPU number dev's name, compute capability, SM count and memory.
func DeviceProps(dev int) (DeviceInfo, error) {
	d, err := cuDevice(dev)
	if err != nil {
		return DeviceInfo{}, err
	}
	info := DeviceInfo{Index: dev}
	if info.Name, err = d.Name(); err != nil {
		return DeviceInfo{}, fmt.Errorf("cuda: device %d name: %w", dev, err)
	}
	for _, a := range []struct {
		attr cu.DeviceAttribute
		dst  *int
	}{{cu.ComputeCapabilityMajor, &info.Major}, {cu.ComputeCapabilityMinor, &info.Minor}, {cu.MultiprocessorCount, &info.SMs}} {
		if *a.dst, err = d.Attribute(a.attr); err != nil {
			return DeviceInfo{}, fmt.Errorf("cuda: device %d attribute %d: %w", dev, a.attr, err)
		}
	}
	total, err := d.TotalMem()
	if err != nil {
		return DeviceInfo{}, fmt.Errorf("cuda: device %d total memory: %w", dev, err)
	}
	info.TotalMem = uint64(total)
	return info, nil
}

// MemInfo reports GPU number dev's free and total memory (what KV-cache sizing works from). It
// pushes the device's primary context, the one cudart uses, on this goroutine's OS thread
// (locked for the call: contexts are current per thread), asks, and pops it again, so the
// thread's current context is as it was. Retaining the primary context creates it if cudart has
// not yet; call it after New to find it already there.
func MemInfo(dev int) (free, total uint64, err error) {
	d, err := cuDevice(dev)
	if err != nil {
		return 0, 0, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ctx, err := d.RetainPrimaryCtx()
	if err != nil {
		return 0, 0, fmt.Errorf("cuda: device %d primary context: %w", dev, err)
	}
	defer d.ReleasePrimaryCtx()
	if err := cu.PushCurrentCtx(ctx); err != nil {
		return 0, 0, fmt.Errorf("cuda: device %d primary context: %w", dev, err)
	}
	defer cu.PopCurrentCtx()
	f, t, err := cu.MemInfo()
	if err != nil {
		return 0, 0, fmt.Errorf("cuda: device %d memory info: %w", dev, err)
	}
	return uint64(f), uint64(t), nil
}

// What cudart reports, for the tests that check the driver API's answers against it.

func cudartDeviceCount() (int, error) {
	var n C.int
	if err := cudaError("device count", C.lp_device_count(&n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

func cudartDeviceProps(dev int) (DeviceInfo, error) {
	var name [256]C.char
	var major, minor, sms C.int
	var total C.size_t
	if err := cudaError("device properties", C.lp_device_props(C.int(dev), &name[0], C.int(len(name)), &major, &minor, &sms, &total)); err != nil {
		return DeviceInfo{}, err
	}
	return DeviceInfo{Index: dev, Name: C.GoString(&name[0]), Major: int(major), Minor: int(minor), SMs: int(sms), TotalMem: uint64(total)}, nil
}

// cudartMemInfo is cudaMemGetInfo on GPU number dev (made current on a locked thread).
func cudartMemInfo(dev int) (free, total uint64, err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cudaError("set device", C.lp_set_device(C.int(dev))); err != nil {
		return 0, 0, err
	}
	var f, t C.size_t
	if err := cudaError("mem info", C.lp_mem_info(&f, &t)); err != nil {
		return 0, 0, err
	}
	return uint64(f), uint64(t), nil
}
