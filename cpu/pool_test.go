package cpu

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"
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
