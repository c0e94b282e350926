//go:build amd64 && !purego

package cpu

import "golang.org/x/sys/cpu"

// useAVX2 selects the AVX2+FMA kernels in dot_amd64.s; without them (or with the purego build
// tag) the portable kernels in dot.go run. x/sys/cpu also checks that the OS saves YMM state.
var useAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// useAVX512 selects the 16-lane 4-row kernel (x/sys/cpu checks the OS saves ZMM state too).
var useAVX512 = useAVX2 && cpu.X86.HasAVX512F

//go:noescape
func dotF32AVX2(x, w []float32) float32

//go:noescape
func dotBF16AVX2(x []float32, w []uint16) float32

//go:noescape
func dotBF16x4AVX2(x *float32, stride int, w *uint16, n int, out *[4]float32)

//go:noescape
func dotBF16x4AVX512(x *float32, stride int, w *uint16, n int, out *[4]float32)

//go:noescape
func dotF32x4AVX2(x *float32, stride int, w *float32, n int, out *[4]float32)

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

// dotBF16x4 sets out[r] = dot(x[r*k : r*k+k], w) for the four rows of x (len(x) >= 3k+len(w)).
func dotBF16x4(x []float32, k int, w []uint16, out *[4]float32) {
	n := len(w)
	if !useAVX2 || n < 8 {
		dotBF16x4Generic(x, k, w, out)
		return
	}
	_ = x[3*k+n-1] // bounds for all four rows
	n8 := n &^ 7
	if useAVX512 {
		dotBF16x4AVX512(&x[0], k, &w[0], n8, out)
	} else {
		dotBF16x4AVX2(&x[0], k, &w[0], n8, out)
	}
	if n8 < n {
		for r := range out {
			out[r] += dotBF16Generic(x[r*k+n8:r*k+n], w[n8:])
		}
	}
}

// dotF32x4 is dotBF16x4 for float32 weights.
func dotF32x4(x []float32, k int, w []float32, out *[4]float32) {
	n := len(w)
	if !useAVX2 || n < 8 {
		dotF32x4Generic(x, k, w, out)
		return
	}
	_ = x[3*k+n-1]
	n8 := n &^ 7
	dotF32x4AVX2(&x[0], k, &w[0], n8, out)
	if n8 < n {
		for r := range out {
			out[r] += dotF32Generic(x[r*k+n8:r*k+n], w[n8:])
		}
	}
}
