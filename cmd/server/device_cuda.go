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

func openCUDA(n int, log *slog.Logger) (model.Backend, func(), error) {
	b, err := cuda.New(n)
	if err != nil {
		return nil, nil, fmt.Errorf("--device cuda:%d: %w", n, err)
	}
	log.Info("backend ready", "backend", b.Name())
	return b, func() {}, nil
}
