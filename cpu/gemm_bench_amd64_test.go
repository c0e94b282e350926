//go:build amd64 && !purego

package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/loraplex/loraplex/model"
	"golang.org/x/sys/unix"
)

// threadTime is the calling thread's CPU time. On a shared machine it leaves out the time the
// thread waits descheduled, which wall time does not; the benchmarks here lock their goroutine
// to a thread and run on one worker, so it is the kernels' own time.
func threadTime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		panic(err)
	}
	return time.Duration(ts.Nano())
}

// BenchmarkPrefillGemm times one prefill-chunk MatMul (512 rows, bf16 weights, one worker) on
// the packed-panel path and on the dot path, taking turns within each iteration so that load
// from other processes hits both alike, and reports each one's best GFLOP/s (thread CPU time)
// and their ratio.
// Shapes: the trained demo's gate projection, the 100M bench model's gate and down, and the
// gate at 16-64 rows, where the packing stops paying (panelMinRows).
func BenchmarkPrefillGemm(b *testing.B) {
	for _, sh := range []struct{ n, k, m int }{{512, 320, 640}, {512, 768, 2048}, {512, 2048, 768}, {16, 768, 2048}, {32, 768, 2048}, {64, 768, 2048}} {
		b.Run(fmt.Sprintf("n=%d/k=%d/m=%d", sh.n, sh.k, sh.m), func(b *testing.B) {
			be := New(1)
			defer be.Close()
			r := rand.New(rand.NewPCG(1, 1))
			x := model.Tensor{Rows: sh.n, Cols: sh.k, DType: model.F32, Buf: randF32(r, sh.n*sh.k)}
			w := model.Tensor{Rows: sh.m, Cols: sh.k, DType: model.BF16, Buf: randBF16(r, sh.m*sh.k)}
			out := be.Alloc(sh.n, sh.m)
			best := [2]time.Duration{math.MaxInt64, math.MaxInt64}
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			defer func() { panelKernels = useAVX2 }()
			for range b.N {
				for path, on := range []bool{true, false} {
					panelKernels = on
					start := threadTime()
					be.MatMul(out, x, w)
					best[path] = min(best[path], threadTime()-start)
				}
			}
			flop := 2 * float64(sh.n*sh.k*sh.m)
			b.ReportMetric(flop/best[0].Seconds()/1e9, "panel_GFLOP/s")
			b.ReportMetric(flop/best[1].Seconds()/1e9, "dot_GFLOP/s")
			b.ReportMetric(best[1].Seconds()/best[0].Seconds(), "panel_speedup")
		})
	}
}

// BenchmarkAttentionKernels times the page kernels against their portable versions on one page
// of 16 keys (head size 64, and the demo's 40; the cache's row stride of 4 KV heads of 64), and the exp-based row kernels
// on 2,048 floats, best of turns (thread CPU time), and reports the speed-up of each.
func BenchmarkAttentionKernels(b *testing.B) {
	const ps, stride = 16, 256
	r := rand.New(rand.NewPCG(1, 2))
	q, kv := randF32(r, 64), randF32(r, ps*stride)
	sc, o := make([]float32, ps), make([]float32, 64)
	row, silu := randF32(r, 2048), make([]float32, 2048)
	kernels := []struct {
		name       string
		fast, slow func()
	}{
		{"scores/d=64", func() { scores(q, kv, stride, 0.125, sc) }, func() { scoresGeneric(q, kv, stride, 0.125, sc) }},
		{"scores/d=40", func() { scores(q[:40], kv, stride, 0.125, sc) }, func() { scoresGeneric(q[:40], kv, stride, 0.125, sc) }},
		{"accum/d=64", func() { accum(sc, kv, stride, o) }, func() { accumGeneric(sc, kv, stride, o) }},
		{"accum/d=40", func() { accum(sc, kv, stride, o[:40]) }, func() { accumGeneric(sc, kv, stride, o[:40]) }},
		{"max+expSub/2048", func() { expSub(row, maxF32(row)); copy(row, kv) }, func() { expSubGeneric(row, maxGeneric(row)); copy(row, kv) }},
		{"siluMul/2048", func() { siluMul(silu, row, row) }, func() { siluMulGeneric(silu, row, row) }},
	}
	for _, k := range kernels {
		b.Run(k.name, func(b *testing.B) {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			best := [2]time.Duration{math.MaxInt64, math.MaxInt64}
			for range b.N {
				for i, fn := range []func(){k.fast, k.slow} {
					start := threadTime()
					for range 64 {
						fn()
					}
					best[i] = min(best[i], threadTime()-start)
				}
			}
			b.ReportMetric(float64(best[0].Nanoseconds())/64, "ns/call")
			b.ReportMetric(best[1].Seconds()/best[0].Seconds(), "speedup_vs_generic")
		})
	}
}
