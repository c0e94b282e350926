//go:build !cuda

package benchenv

import "fmt"

func newCUDA() (Backend, func(), error) {
	return nil, nil, fmt.Errorf("-device cuda needs a build with -tags cuda (after make kernels)")
}

// H2D is the host-to-device copy bandwidth measured with raw runtime calls; on builds without
// CUDA it is unavailable.
type H2D struct{ PinnedBytesPerS, PageableBytesPerS float64 }

// MeasureH2D returns an error without CUDA.
func MeasureH2D(bytes, iters int) (H2D, error) {
	return H2D{}, fmt.Errorf("no CUDA in this build")
}

// Sync waits for the device (a no-op without CUDA).
func Sync(b Backend) error { return nil }
