//go:build !amd64 || purego

package cpu

func dotF32(x, w []float32) float32           { return dotF32Generic(x, w) }
func dotBF16(x []float32, w []uint16) float32 { return dotBF16Generic(x, w) }
