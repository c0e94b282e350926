package main

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/model"
)

// openBackend picks the device. auto takes CUDA when this binary has it and a GPU is present,
// otherwise the CPU, and logs why; asking for CUDA in a build without it is an error rather than
// a silent CPU run that would be a hundred times slower.
func openBackend(device string, threads int, log *slog.Logger) (model.Backend, func(), error) {
	switch {
	case device == "cpu":
	case device == "auto":
		b, closeFn, reason := autoCUDA(log)
		if b != nil {
			return b, closeFn, nil
		}
		log.Info("device auto: using the CPU", "reason", reason)
	case device == "cuda" || strings.HasPrefix(device, "cuda:"):
		n := 0
		if device != "cuda" {
			var err error
			if n, err = strconv.Atoi(strings.TrimPrefix(device, "cuda:")); err != nil || n < 0 {
				return nil, nil, fmt.Errorf("--device %q: want cuda:N with N a GPU index", device)
			}
		}
		return openCUDA(n, log)
	default:
		return nil, nil, fmt.Errorf("--device %q: want auto, cpu, cuda or cuda:N", device)
	}
	b := cpu.New(threads)
	log.Info("backend ready", "backend", b.Name())
	return b, b.Close, nil
}
