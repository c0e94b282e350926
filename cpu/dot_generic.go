//go:build !amd64 || purego

package cpu

func dotF32(x, w []float32) float32           { return dotF32Generic(x, w) }
func dotBF16(x []float32, w []uint16) float32 { return dotBF16Generic(x, w) }

func dotBF16x4(x []float32, k int, w []uint16, out *[4]float32) { dotBF16x4Generic(x, k, w, out) }
func dotF32x4(x []float32, k int, w []float32, out *[4]float32) { dotF32x4Generic(x, k, w, out) }

func scores(q, k []float32, stride int, scale float32, out []float32) {
	scoresGeneric(q, k, stride, scale, out)
}
func accum(p, v []float32, stride int, o []float32) { accumGeneric(p, v, stride, o) }
func maxF32(x []float32) float32                    { return maxGeneric(x) }
func expSub(x []float32, m float32) float32         { return expSubGeneric(x, m) }

// Without AVX2 gemm keeps the dot-product path: the panel micro-kernels are assembly only.
const panelKernels = false

func gemm6x16(x []float32, ldx int, panel, out []float32, ldo int, alpha float32, accumulate bool) {
	gemmPanelGeneric(x, ldx, 6, panel, out, ldo, alpha, accumulate)
}

func gemm1x16(x, panel, out []float32, alpha float32, accumulate bool) {
	gemmPanelGeneric(x, 0, 1, panel, out, 0, alpha, accumulate)
}

func siluMul(out, gate, up []float32) { siluMulGeneric(out, gate, up) }

func packPanelBF16(dst []float32, w []uint16, k int) { packPanelBF16Generic(dst, w, k, 0) }
