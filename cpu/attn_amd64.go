//go:build amd64 && !purego

package cpu

//go:noescape
func scoresAVX2(q, k []float32, stride, n int, scale float32, out []float32)

//go:noescape
func accumAVX2(p, v []float32, stride int, o []float32)

//go:noescape
func maxAVX2(x []float32) float32

//go:noescape
func expSubAVX2(x []float32, m float32) float32

// scores sets out[t] = scale * (q · k[t*stride : t*stride+len(q)]) for t < len(out).
func scores(q, k []float32, stride int, scale float32, out []float32) {
	n, d := len(out), len(q)
	if n == 0 {
		return
	}
	_ = k[(n-1)*stride+d-1]
	n4 := 0
	if useAVX2 && d > 0 && d%8 == 0 {
		n4 = n &^ 3
		if n4 > 0 {
			scoresAVX2(q, k, stride, n4, scale, out[:n4])
		}
	}
	if n4 < n {
		scoresGeneric(q, k[n4*stride:], stride, scale, out[n4:])
	}
}

// accum adds sum over t of p[t] * v[t*stride : t*stride+len(o)] to o.
func accum(p, v []float32, stride int, o []float32) {
	d := len(o)
	if len(p) == 0 || d == 0 {
		return
	}
	_ = v[(len(p)-1)*stride+d-1]
	d8 := 0
	if useAVX2 {
		if d8 = d &^ 7; d8 > 0 {
			accumAVX2(p, v, stride, o[:d8])
		}
	}
	if d8 < d {
		accumGeneric(p, v[d8:], stride, o[d8:])
	}
}

// maxF32 is the largest element of x (len(x) > 0).
func maxF32(x []float32) float32 {
	if !useAVX2 || len(x) < 8 {
		return maxGeneric(x)
	}
	n8 := len(x) &^ 7
	m := maxAVX2(x[:n8])
	if n8 < len(x) {
		m = max(m, maxGeneric(x[n8:]))
	}
	return m
}

// expSub sets x[i] = exp(x[i] - m) and returns the sum.
func expSub(x []float32, m float32) float32 {
	if !useAVX2 {
		return expSubGeneric(x, m)
	}
	n8 := len(x) &^ 7
	var sum float32
	if n8 > 0 {
		sum = expSubAVX2(x[:n8], m)
	}
	if n8 < len(x) {
		sum += expSubGeneric(x[n8:], m)
	}
	return sum
}

//go:noescape
func siluMulAVX2(out, gate, up []float32)

// siluMul sets out[i] = silu(gate[i]) * up[i] (len(gate), len(up) >= len(out)).
func siluMul(out, gate, up []float32) {
	gate, up = gate[:len(out)], up[:len(out)]
	n8 := 0
	if useAVX2 {
		if n8 = len(out) &^ 7; n8 > 0 {
			siluMulAVX2(out[:n8], gate[:n8], up[:n8])
		}
	}
	siluMulGeneric(out[n8:], gate[n8:], up[n8:])
}
