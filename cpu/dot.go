package cpu

import "math"

// dotF32Generic and dotBF16Generic are the portable kernels (and the reference the assembly
// versions are tested against). Eight independent accumulators hide the FMA latency.
func dotF32Generic(x, w []float32) float32 {
	n := len(x)
	w = w[:n]
	var s0, s1, s2, s3, s4, s5, s6, s7 float32
	i := 0
	for ; i+8 <= n; i += 8 {
		s0 += x[i] * w[i]
		s1 += x[i+1] * w[i+1]
		s2 += x[i+2] * w[i+2]
		s3 += x[i+3] * w[i+3]
		s4 += x[i+4] * w[i+4]
		s5 += x[i+5] * w[i+5]
		s6 += x[i+6] * w[i+6]
		s7 += x[i+7] * w[i+7]
	}
	for ; i < n; i++ {
		s0 += x[i] * w[i]
	}
	return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
}

// dotBF16Generic widens each bfloat16 weight to float32 (its top 16 bits) on the fly, so the
// weights stay half-size in memory: decode is memory-bound and this halves the bytes per token.
func dotBF16Generic(x []float32, w []uint16) float32 {
	n := len(x)
	w = w[:n]
	var s0, s1, s2, s3, s4, s5, s6, s7 float32
	i := 0
	for ; i+8 <= n; i += 8 {
		s0 += x[i] * math.Float32frombits(uint32(w[i])<<16)
		s1 += x[i+1] * math.Float32frombits(uint32(w[i+1])<<16)
		s2 += x[i+2] * math.Float32frombits(uint32(w[i+2])<<16)
		s3 += x[i+3] * math.Float32frombits(uint32(w[i+3])<<16)
		s4 += x[i+4] * math.Float32frombits(uint32(w[i+4])<<16)
		s5 += x[i+5] * math.Float32frombits(uint32(w[i+5])<<16)
		s6 += x[i+6] * math.Float32frombits(uint32(w[i+6])<<16)
		s7 += x[i+7] * math.Float32frombits(uint32(w[i+7])<<16)
	}
	for ; i < n; i++ {
		s0 += x[i] * math.Float32frombits(uint32(w[i])<<16)
	}
	return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
}

// dotBF16x4Generic and dotF32x4Generic compute four dot products of consecutive rows of x
// (row r at x[r*k:]) with one weight row w of length n <= k.
func dotBF16x4Generic(x []float32, k int, w []uint16, out *[4]float32) {
	n := len(w)
	for r := range out {
		out[r] = dotBF16Generic(x[r*k:r*k+n], w)
	}
}

func dotF32x4Generic(x []float32, k int, w []float32, out *[4]float32) {
	n := len(w)
	for r := range out {
		out[r] = dotF32Generic(x[r*k:r*k+n], w)
	}
}
