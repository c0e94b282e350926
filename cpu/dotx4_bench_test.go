//go:build amd64 && !purego

package cpu

import (
	"fmt"
	"testing"
)

func BenchmarkDotX4(b *testing.B) {
	for _, k := range []int{768, 2048} {
		x := make([]float32, 4*k)
		wb := make([]uint16, k)
		for i := range x {
			x[i] = float32(i%7) * 0.1
		}
		for i := range wb {
			wb[i] = 0x3f80
		}
		var out [4]float32
		b.Run(fmt.Sprintf("k=%d/avx2", k), func(b *testing.B) {
			b.SetBytes(int64(8 * k * 4))
			for i := 0; i < b.N; i++ {
				dotBF16x4AVX2(&x[0], k, &wb[0], k, &out)
			}
		})
		b.Run(fmt.Sprintf("k=%d/avx512", k), func(b *testing.B) {
			b.SetBytes(int64(8 * k * 4))
			for i := 0; i < b.N; i++ {
				dotBF16x4AVX512(&x[0], k, &wb[0], k, &out)
			}
		})
	}
}
