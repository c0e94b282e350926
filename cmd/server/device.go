package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/model"
)

// cudaBuilt says whether this binary contains the CUDA backend. The cuda package needs cgo and
// the CUDA toolkit, so it is linked only under the `cuda` build tag; this build has none.
const cudaBuilt = false

// openBackend picks the device. auto falls back to the CPU, saying why; asking for CUDA in a
// build without it is an error rather than a silent CPU run that would be 100x slower.
func openBackend(device string, threads int, log *slog.Logger) (model.Backend, func(), error) {
	switch {
	case device == "cpu":
	case device == "auto":
		log.Info("device auto: using the CPU", "reason", "this binary was built without CUDA support (build with -tags cuda)")
	case device == "cuda" || strings.HasPrefix(device, "cuda:"):
		if !cudaBuilt {
			return nil, nil, fmt.Errorf("--device %s: this binary was built without CUDA support; rebuild with -tags cuda on a machine with the CUDA toolkit, or use --device cpu", device)
		}
	default:
		return nil, nil, fmt.Errorf("--device %q: want auto, cpu, cuda or cuda:N", device)
	}
	b := cpu.New(threads)
	log.Info("backend ready", "backend", b.Name())
	return b, b.Close, nil
}
