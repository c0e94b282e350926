//go:build amd64 && !purego

package cpu

//go:noescape
func gemm6x16AVX2(x *float32, ldx int, panel *float32, k int, out *float32, ldo int, alpha float32, accumulate bool)

//go:noescape
func gemm1x16AVX2(x *float32, panel *float32, k int, out *float32, alpha float32, accumulate bool)

//go:noescape
func packBF16AVX2(dst *float32, w *uint16, k, n8 int)

// packPanelBF16 widens 16 weight rows (w, row-major [16, k]) into a panel: dst[p*16+c] = w[c][p]
// (8x8 blocks transposed in registers, the last k%8 columns in Go).
func packPanelBF16(dst []float32, w []uint16, k int) {
	dst, w = dst[:16*k], w[:16*k]
	n8 := k &^ 7
	if n8 > 0 {
		packBF16AVX2(&dst[0], &w[0], k, n8)
	}
	packPanelBF16Generic(dst, w, k, n8)
}

// panelKernels says the packed-panel micro-kernels exist on this machine (gemm's prefill path).
var panelKernels = useAVX2

// gemm6x16 computes six rows of a panel's 16 outputs: out[i*ldo+c] = alpha * sum_p x[i*ldx+p] *
// panel[p*16+c] (+ out[i*ldo+c] when accumulate), for i < 6, c < 16, p < len(panel)/16.
func gemm6x16(x []float32, ldx int, panel, out []float32, ldo int, alpha float32, accumulate bool) {
	k := len(panel) / 16
	_, _ = x[5*ldx+k-1], out[5*ldo+15]
	gemm6x16AVX2(&x[0], ldx, &panel[0], k, &out[0], ldo, alpha, accumulate)
}

// gemm1x16 is gemm6x16 for one row.
func gemm1x16(x, panel, out []float32, alpha float32, accumulate bool) {
	k := len(panel) / 16
	_, _ = x[k-1], out[15]
	gemm1x16AVX2(&x[0], &panel[0], k, &out[0], alpha, accumulate)
}
