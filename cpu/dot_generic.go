//go:build !amd64 || purego

package cpu

func dotF32(x, w []float32) float32           { return dotF32Generic(x, w) }
func dotBF16(x []float32, w []uint16) float32 { return dotBF16Generic(x, w) }

func dotBF16x4(x []float32, k int, w []uint16, out *[4]float32) { dotBF16x4Generic(x, k, w, out) }
func dotF32x4(x []float32, k int, w []float32, out *[4]float32) { dotF32x4Generic(x, k, w, out) }

func axpyF32(a float32, x, y []float32) { axpyF32Generic(a, x, y) }
