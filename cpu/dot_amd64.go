//go:build amd64 && !purego

package cpu

import "golang.org/x/sys/cpu"

// useAVX2 selects the AVX2+FMA kernels in dot_amd64.s; without them (or with the purego build
// tag) the portable kernels in dot.go run. x/sys/cpu also checks that the OS saves YMM state.
var useAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA

//go:noescape
func dotF32AVX2(x, w []float32) float32

//go:noescape
func dotBF16AVX2(x []float32, w []uint16) float32

func dotF32(x, w []float32) float32 {
	if useAVX2 {
		return dotF32AVX2(x, w[:len(x)])
	}
	return dotF32Generic(x, w)
}

func dotBF16(x []float32, w []uint16) float32 {
	if useAVX2 {
		return dotBF16AVX2(x, w[:len(x)])
	}
	return dotBF16Generic(x, w)
}
