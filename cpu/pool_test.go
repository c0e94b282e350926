package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loraplex/loraplex/model"
)

// Every index of a run is visited exactly once, by the chunk run gives it, whether the workers
// are spinning (runs back to back) or parked (a pause longer than spinLimit between runs), and
// whether the caller or a worker finishes first: no wake-up is lost and no chunk runs twice.
func TestPoolRunsEveryChunkOnceAcrossSpinAndPark(t *testing.T) {
	for _, threads := range []int{2, 3, 4} {
		p := newPool(threads, new(faultLatch))
		const total = 97
		var hits [total]atomic.Int32
		var slowWorker atomic.Int32
		fn := func(w, lo, hi int) {
			if w == int(slowWorker.Load()) {
				time.Sleep(2 * spinLimit) // the caller's spin runs out and it parks
			}
			for i := lo; i < hi; i++ {
				hits[i].Add(1)
			}
		}
		runs := 0
		for round := range 40 {
			slowWorker.Store(int32(round % (threads + 1))) // none when == threads
			switch round % 4 {
			case 1:
				time.Sleep(3 * spinLimit) // the workers' spin runs out and they park
			case 2:
				runtime.Gosched()
			}
			p.run(total, 1, fn)
			runs++
			for i := range hits {
				if got := hits[i].Load(); got != int32(runs) {
					t.Fatalf("%d threads, run %d: index %d ran %d times, want %d", threads, runs, i, got, runs)
				}
			}
		}
		p.close()
	}
}

// An idle pool costs no CPU: once the spin bound has passed, its workers are parked, not
// polling (a server between requests must not hold a core).
func TestIdlePoolParks(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's own threads use CPU")
	}
	p := newPool(runtime.GOMAXPROCS(0), new(faultLatch))
	defer p.close()
	p.run(64, 1, func(int, int, int) {})
	time.Sleep(20 * spinLimit)
	cpu0, wall0 := cpuTime(), time.Now()
	time.Sleep(100 * time.Millisecond)
	cpu, wall := cpuTime()-cpu0, time.Since(wall0)
	if cpu > wall/10 {
		t.Fatalf("an idle pool used %v of CPU in %v", cpu, wall)
	}
}

// A product is bitwise the same however the pool splits it: with 1 to 4 threads (so with
// chunks of other sizes, taken by other threads), on the decode path, the panel path and
// MatMulShared's concatenated columns.
func TestProductIndependentOfSplit(t *testing.T) {
	r := rand.New(rand.NewPCG(14, 6))
	const k, m = 768, 1000
	w, _ := randWeights(r, m, k, model.BF16)
	w2, _ := randWeights(r, 300, k, model.BF16)
	for _, n := range []int{1, 5, 40} {
		x := model.Tensor{Rows: n, Cols: k, DType: model.F32, Buf: randF32(r, n*k)}
		var want [2][]float32
		for threads := 1; threads <= 4; threads++ {
			b := New(threads)
			outs := []model.Tensor{b.Alloc(n, m), b.Alloc(n, 300)}
			b.MatMulShared(outs, x, []model.Tensor{w, w2})
			for i, o := range outs {
				got := f32(o)
				if threads == 1 {
					want[i] = got
					continue
				}
				for j := range got {
					if math.Float32bits(got[j]) != math.Float32bits(want[i][j]) {
						t.Fatalf("%d rows, %d threads: output %d[%d] = %g, with one thread %g", n, threads, i, j, got[j], want[i][j])
					}
				}
			}
			b.Close()
		}
	}
}

// A panic in the caller's chunk (a kernel bug, which the engine recovers from and steps on)
// leaves the pool whole: run returns only once the workers are done with the failed run, and
// the next run visits every index exactly once.
func TestPoolSurvivesAPanicInTheCallersChunk(t *testing.T) {
	p := newPool(2, new(faultLatch))
	defer p.close()
	const total = 64
	for round := range 50 {
		var ran atomic.Int32
		func() {
			defer func() {
				if recover() == nil {
					t.Fatal("the caller's panic did not come out of run")
				}
			}()
			p.run(total, 1, func(w, lo, hi int) {
				if w == 0 {
					panic("kernel bug")
				}
				time.Sleep(time.Microsecond) // the worker is still running when the caller panics
				ran.Add(int32(hi - lo))
			})
		}()
		after := ran.Load()
		time.Sleep(100 * time.Microsecond)
		if ran.Load() != after {
			t.Fatalf("round %d: a worker went on with the failed run after run returned", round)
		}
		checkEveryIndexOnce(t, p, total, round)
	}
}

// A panic in a worker's chunk does not end the process: run raises it on the calling goroutine
// once the run is over (where the engine recovers it), and the pool goes on working.
func TestPoolRaisesAWorkersPanicOnTheCaller(t *testing.T) {
	p := newPool(2, new(faultLatch))
	defer p.close()
	const total = 64
	raised := 0
	for round := range 20 {
		got := func() (r any) {
			defer func() { r = recover() }()
			p.run(total, 1, func(w, lo, hi int) {
				if w == 1 {
					panic("kernel bug on a worker")
				}
				time.Sleep(50 * time.Microsecond) // leave the worker time to join
			})
			return nil
		}()
		if got != nil {
			if !strings.Contains(fmt.Sprint(got), "kernel bug on a worker") {
				t.Fatalf("round %d: run raised %v", round, got)
			}
			raised++
		}
		checkEveryIndexOnce(t, p, total, round)
	}
	if raised == 0 {
		t.Fatal("the worker never joined a run: nothing was tested")
	}
}

// checkEveryIndexOnce runs a product of total indices on p and fails unless each ran exactly
// once: the pool still works after the panic of the given round.
func checkEveryIndexOnce(t *testing.T, p *pool, total, round int) {
	t.Helper()
	hits := make([]atomic.Int32, total)
	p.run(total, 1, func(_, lo, hi int) {
		for i := lo; i < hi; i++ {
			hits[i].Add(1)
		}
	})
	for i := range hits {
		if n := hits[i].Load(); n != 1 {
			t.Fatalf("round %d: after the panic, index %d ran %d times", round, i, n)
		}
	}
}
