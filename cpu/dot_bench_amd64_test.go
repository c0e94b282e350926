//go:build amd64 && !purego

package cpu

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"testing"
	"time"
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

// BenchmarkStream streams 192 MiB of BF16 weight rows (k = 768) through the single-row kernels
// on GOMAXPROCS goroutines, as a batch-1 decode step does: the kernels' memory throughput. The
// kernels take turns within every iteration and each reports its best pass, so load from other
// processes on a shared machine hits them alike.
func BenchmarkStream(b *testing.B) {
	const k = 768
	w := make([]uint16, 96<<20)
	for i := range w {
		w[i] = uint16(0x3f80 + i%64)
	}
	x := make([]float32, k)
	rows := len(w) / k
	workers := runtime.GOMAXPROCS(0)
	kernels := []struct {
		name string
		fn   func([]float32, []uint16) float32
	}{{"generic", dotBF16Generic}, {"avx2", dotBF16AVX2}}
	best := make([]time.Duration, len(kernels))
	for i := range best {
		best[i] = time.Duration(math.MaxInt64)
	}
	var sink float32
	var mu sync.Mutex
	b.SetBytes(int64(2 * len(w) * len(kernels)))
	for i := 0; i < b.N; i++ {
		for c, kern := range kernels {
			t0 := time.Now()
			parallel(workers, rows, func(lo, hi int) {
				var s float32
				for j := lo; j < hi; j++ {
					s += kern.fn(x, w[j*k:j*k+k])
				}
				mu.Lock()
				sink += s
				mu.Unlock()
			})
			best[c] = min(best[c], time.Since(t0))
		}
	}
	for c, kern := range kernels {
		b.ReportMetric(float64(2*len(w))/best[c].Seconds()/1e9, kern.name+"_bestGB/s")
	}
}
