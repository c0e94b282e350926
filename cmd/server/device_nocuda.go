//go:build !cuda

package main

import (
	"fmt"
	"log/slog"

	"github.com/loraplex/loraplex/model"
)

// This build has no CUDA backend: the cuda package needs cgo and the CUDA toolkit, so it is
// linked only under the `cuda` build tag (make cuda).

func autoCUDA(*slog.Logger) (model.Backend, func(), string) {
	return nil, nil, "this binary was built without CUDA support (build with make cuda)"
}

func openCUDA(n int, _ *slog.Logger) (model.Backend, func(), error) {
	return nil, nil, fmt.Errorf("--device cuda:%d: this binary was built without CUDA support; rebuild with `make cuda` on a machine with the CUDA toolkit, or use --device cpu", n)
}
