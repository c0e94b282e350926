//go:build cuda

package main

import (
	"fmt"
	"log/slog"

	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/model"
)

func autoCUDA(log *slog.Logger) (model.Backend, func(), string) {
	n, err := cuda.DeviceCount()
	if err != nil || n == 0 {
		return nil, nil, fmt.Sprintf("no usable CUDA device (%v)", err)
	}
	b, closeFn, err := openCUDA(0, log)
	if err != nil {
		return nil, nil, err.Error()
	}
	return b, closeFn, ""
}

// openCUDA opens GPU number n (cuda.New checks n against the devices the driver sees) and logs
// what the device is and how much of its memory is free once the backend holds its buffers.
func openCUDA(n int, log *slog.Logger) (model.Backend, func(), error) {
	b, err := cuda.New(n)
	if err != nil {
		return nil, nil, fmt.Errorf("--device cuda:%d: %w", n, err)
	}
	attrs := []any{"backend", b.Name()}
	if info, err := cuda.DeviceProps(n); err == nil {
		attrs = append(attrs, "sms", info.SMs)
	}
	if free, total, err := cuda.MemInfo(n); err == nil {
		attrs = append(attrs, "mem_free_bytes", free, "mem_total_bytes", total)
	} else {
		attrs = append(attrs, "mem_info_error", err.Error())
	}
	log.Info("backend ready", attrs...)
	return b, func() {}, nil
}
