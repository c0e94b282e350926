package cpu

import (
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// pool runs a function over index ranges on a fixed set of goroutines: the caller and n-1
// workers started once. Kernels call run once per op, so a batch-1 decode step on the 100M
// shape hands work to the workers about 61 times a token (q/k/v, attention, o, gate/up, down per
// layer, then the lm_head), and between two hand-offs the caller runs a norm or RoPE of a few
// microseconds. What a hand-off costs is therefore a large part of the step.
//
// Why spin: a worker blocked in a channel receive is a parked OS thread. Waking it is a futex
// call, and on a virtual machine an idle vCPU has halted, so the wake-up goes through the host
// and takes tens of microseconds; the k or v projection it is woken for streams in about as
// long. So between ops the waiting side (a worker waiting for work, the caller waiting for the
// workers to finish) polls an atomic instead: a worker sees its next chunk, and the caller sees
// the last worker finish, within a cache-line transfer. This is what llama.cpp's threads do
// between ops (its --poll), and it is most of what a persistent parallel region per layer would
// give: the ops between two products are a few microseconds of serial work, inside the spin.
//
// Why bounded: a poll that waits for a descheduled thread only burns the core that thread
// needs, and a server between requests must not hold a core. Each wait spins for at most
// spinLimit, then parks on a channel as before (a flag handshake makes sure no wake-up is lost),
// so an idle backend costs nothing and a loaded machine loses at most spinLimit per hand-off.
// spinLimit is well above the serial work between two ops of a decode step and far below a
// scheduler time slice.
//
// Determinism: run splits [0, total) into exactly the chunks it split it into before (the same
// lo/hi for the same worker index), and each chunk's kernel is unchanged, so every output is
// computed in the same order as with the channel pool: bitwise the same results. Only how a
// worker learns of its chunk changed.
//
// One goroutine at a time may call run (the backend is driven by one step at a time).
type pool struct {
	n       int
	spin    bool         // GOMAXPROCS gives every goroutine of the pool a thread (newPool)
	workers []poolWorker // index 0 is the caller's and unused
	faults  *faultLatch  // a chunk that faults on a changed file mapping ends here (see fault.go)

	_       [64]byte     // left is written by the workers: keep it off the slots' cache lines
	left    atomic.Int32 // workers still running the current run's chunks
	waiting atomic.Bool  // the caller has stopped spinning and waits on done
	done    chan struct{}
}

// spinLimit bounds each spinning wait (see pool).
const spinLimit = 50 * time.Microsecond

// poolWorker is one worker's slot: the chunk the caller publishes for it and the generation
// that tells it a new chunk is there. Padded to its own cache lines, so that one worker
// polling its slot does not pull in another's.
type poolWorker struct {
	gen      atomic.Uint64 // bumped by the caller after it wrote task
	sleeping atomic.Bool   // the worker has stopped spinning and waits on wake
	wake     chan struct{}
	task     task
	_        [64]byte
}

type task struct {
	fn     func(worker, lo, hi int)
	lo, hi int
}

func newPool(n int, faults *faultLatch) *pool {
	// With fewer Ps than goroutines a spinning one would hold the P that the one it waits
	// for needs: then every wait parks at once, as the channel pool did.
	p := &pool{n: n, spin: runtime.GOMAXPROCS(0) >= n, workers: make([]poolWorker, n), faults: faults, done: make(chan struct{}, 1)}
	for i := 1; i < n; i++ {
		p.workers[i].wake = make(chan struct{}, 1)
		go p.work(i)
	}
	return p
}

// work is worker w's loop: wait for the next generation of its slot, run its chunk, report.
// A task without a function (close) ends it.
func (p *pool) work(w int) {
	debug.SetPanicOnFault(true)
	s := &p.workers[w]
	var seen uint64
	for {
		seen = p.waitChange(&s.gen, seen, &s.sleeping, s.wake)
		t := s.task
		if t.fn == nil {
			return
		}
		p.do(w, t)
		if p.left.Add(-1) == 0 && p.waiting.CompareAndSwap(true, false) {
			p.done <- struct{}{}
		}
	}
}

// waitChange spins until gen differs from seen, then parks: it sets sleeping, looks once more
// (a bump between the last poll and the flag would otherwise be missed), and receives from
// wake. The signalling side bumps gen first and sends on wake only if it is the one that
// clears sleeping, so a send is received exactly once. It returns the new generation.
func (p *pool) waitChange(gen *atomic.Uint64, seen uint64, sleeping *atomic.Bool, wake chan struct{}) uint64 {
	if p.spin {
		if g, ok := spinChange(gen, seen); ok {
			return g
		}
	}
	sleeping.Store(true)
	if g := gen.Load(); g != seen && sleeping.CompareAndSwap(true, false) {
		return g
	}
	<-wake
	return gen.Load()
}

// spinChange polls gen for up to spinLimit; ok says it changed.
func spinChange(gen *atomic.Uint64, seen uint64) (uint64, bool) {
	var start time.Time
	for i := 0; ; i++ {
		if g := gen.Load(); g != seen {
			return g, true
		}
		if i&63 == 63 { // the clock costs more than a poll: read it now and then
			if start.IsZero() {
				start = time.Now()
			} else if time.Since(start) > spinLimit {
				return 0, false
			}
		}
	}
}

// signal publishes t to worker w and wakes it if it parked.
func (p *pool) signal(w int, t task) {
	s := &p.workers[w]
	s.task = t
	s.gen.Add(1)
	if s.sleeping.CompareAndSwap(true, false) {
		s.wake <- struct{}{}
	}
}

// wait returns once every worker of the current run has finished its chunk: it spins on left,
// then parks on done with the same handshake as waitChange.
func (p *pool) wait() {
	if p.spin && spinZero(&p.left) {
		return
	}
	p.waiting.Store(true)
	if p.left.Load() == 0 && p.waiting.CompareAndSwap(true, false) {
		return
	}
	<-p.done
}

// spinZero polls n for up to spinLimit; it says whether n reached zero.
func spinZero(n *atomic.Int32) bool {
	var start time.Time
	for i := 0; n.Load() != 0; i++ {
		if i&63 == 63 {
			if start.IsZero() {
				start = time.Now()
			} else if time.Since(start) > spinLimit {
				return false
			}
		}
	}
	return true
}

// do runs a worker's chunk; a fault ends the chunk, not the process.
func (p *pool) do(w int, t task) {
	defer p.faults.catch()
	t.fn(w, t.lo, t.hi)
}

// callerChunk runs the calling goroutine's chunk the same way, so that run always gets to wait
// for its workers.
func (p *pool) callerChunk(fn func(worker, lo, hi int), lo, hi int) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer p.faults.catch()
	fn(0, lo, hi)
}

func (p *pool) close() {
	for w := 1; w < p.n; w++ {
		p.signal(w, task{})
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
	p.left.Store(int32(chunks - 1))
	for w := 1; w < chunks; w++ {
		lo := min(total, w*per)
		hi := min(total, lo+per)
		p.signal(w, task{fn: fn, lo: lo, hi: hi})
	}
	p.callerChunk(fn, 0, min(total, per))
	p.wait()
}
