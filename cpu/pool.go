package cpu

import (
	"runtime/debug"
	"sync"
)

// pool runs a function over index ranges on a fixed set of goroutines. Kernels call run once
// per op; the workers are started once, so an op costs a few channel operations, not goroutine
// creation.
type pool struct {
	n      int
	tasks  []chan task
	wg     sync.WaitGroup
	faults *faultLatch // a chunk that faults on a changed file mapping ends here (see fault.go)
}

type task struct {
	fn     func(worker, lo, hi int)
	lo, hi int
	worker int
}

func newPool(n int, faults *faultLatch) *pool {
	p := &pool{n: n, tasks: make([]chan task, n), faults: faults}
	for i := 1; i < n; i++ {
		p.tasks[i] = make(chan task, 1)
		go func(ch chan task) {
			debug.SetPanicOnFault(true)
			for t := range ch {
				p.do(t)
			}
		}(p.tasks[i])
	}
	return p
}

// do runs a worker's chunk; a fault ends the chunk, not the process.
func (p *pool) do(t task) {
	defer p.wg.Done()
	defer p.faults.catch()
	t.fn(t.worker, t.lo, t.hi)
}

// callerChunk runs the calling goroutine's chunk the same way, so that run always gets to wait
// for its workers.
func (p *pool) callerChunk(fn func(worker, lo, hi int), lo, hi int) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer p.faults.catch()
	fn(0, lo, hi)
}

func (p *pool) close() {
	for i := 1; i < p.n; i++ {
		close(p.tasks[i])
	}
}

// run splits [0, total) into at most p.n contiguous chunks of at least grain items and calls fn
// on each, the calling goroutine taking the first chunk. fn gets its worker index, for scratch.
func (p *pool) run(total, grain int, fn func(worker, lo, hi int)) {
	if total <= 0 {
		return
	}
	chunks := min(p.n, max(1, total/max(grain, 1)))
	if chunks == 1 {
		p.callerChunk(fn, 0, total)
		return
	}
	per := (total + chunks - 1) / chunks
	p.wg.Add(chunks - 1)
	for w := 1; w < chunks; w++ {
		lo := min(total, w*per)
		hi := min(total, lo+per)
		p.tasks[w] <- task{fn: fn, lo: lo, hi: hi, worker: w}
	}
	p.callerChunk(fn, 0, min(total, per))
	p.wg.Wait()
}
