package cpu

import "math"

// Attention kernels: the four loops of exact softmax attention over one KV page at a time.
//
//   scores: s[t] = scale · (q · k_t) for the keys of a page (k rows at the cache's row stride).
//           Four keys per pass share each load of q, two accumulators per key keep eight FMA
//           chains in flight, and one horizontal fold yields the four scores together.
//   max, expSub: the row's max, then e_t = exp(s_t - max) in place and their sum, eight lanes
//           at a time. exp is a float32 Cody-Waite reduction and a degree-5 polynomial (the
//           classic Cephes expf): within 2 ulp of the correctly rounded value, where the old
//           path rounded float64 math.Exp. Inputs are <= 0 here, so the result is in (0, 1].
//   accum:  o += sum_t e_t · v_t over a page's value rows, the output block held in registers
//           (64 floats, then 32, then 8) while the value rows stream past.
// Why pages and not one call per key: a key is HeadDim floats (40-128), so per-key calls spent
// more time on the call, the bounds checks and the fold than on the arithmetic; a page is
// PageSize keys at one stride, the natural unit of the paged cache.
//
// Tolerance and determinism: the scores of a page and a row's softmax are computed by the same
// instructions whatever the batch, chunk or row block a row lands in (a page always goes through
// scores whole, so a key's kernel depends only on its place in its page), and every sum has a
// fixed order. So a row's attention output is bit-for-bit the same in a decode step, in any
// prefill chunk, and with the prefix cache warm or cold. Against the previous kernels (float64
// exp, normalized weights) the output differs by float32 rounding only: the fixture tests' HF
// tolerance is unchanged. The portable versions below are the reference the assembly is tested
// against (attnkern_test.go) and what runs without AVX2+FMA or with -tags purego.

func scoresGeneric(q, k []float32, stride int, scale float32, out []float32) {
	d := len(q)
	for t := range out {
		out[t] = dotF32Generic(q, k[t*stride:t*stride+d]) * scale
	}
}

func accumGeneric(p, v []float32, stride int, o []float32) {
	for i := range o {
		s := o[i]
		for t, w := range p {
			s += w * v[t*stride+i]
		}
		o[i] = s
	}
}

func maxGeneric(x []float32) float32 {
	m := x[0]
	for _, v := range x[1:] {
		m = max(m, v)
	}
	return m
}

func expSubGeneric(x []float32, m float32) float32 {
	var sum float32
	for i, v := range x {
		e := expF32(v - m)
		x[i] = e
		sum += e
	}
	return sum
}

func siluMulGeneric(out, gate, up []float32) {
	for i, g := range gate[:len(out)] {
		out[i] = g / (1 + expF32(-g)) * up[i]
	}
}

// expF32 is the float32 exp of expSubAVX2, one lane (see the header above).
func expF32(x float32) float32 {
	const (
		lo, hi = -87.33654, 88
		log2e  = 1.44269504088896341
		ln2hi  = 0.693359375
		ln2lo  = -2.12194440e-4
	)
	x = min(max(x, lo), hi)
	n := float32(math.RoundToEven(float64(x * log2e)))
	r := fma32(n, -ln2hi, x)
	r = fma32(n, -ln2lo, r)
	y := float32(1.9875691500e-4)
	for _, c := range [...]float32{1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 0.5} {
		y = fma32(y, r, c)
	}
	y = fma32(y, r*r, r) + 1
	return y * math.Float32frombits(uint32(int32(n)+127)<<23)
}

func fma32(a, b, c float32) float32 {
	return float32(math.FMA(float64(a), float64(b), float64(c)))
}
