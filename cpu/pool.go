package cpu

import (
	"fmt"
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
// workers to finish) polls an atomic instead: a worker sees its next run, and the caller sees
// the last worker finish, within a cache-line transfer. This is what llama.cpp's threads do
// between ops (its --poll), and it is most of what a persistent parallel region per layer would
// give: the ops between two products are a few microseconds of serial work, inside the spin.
//
// Why bounded: a poll that waits for a descheduled thread only burns the core that thread
// needs, and a server between requests must not hold a core. Each wait spins for at most
// spinLimit, then parks on a channel (a flag handshake makes sure no wake-up is lost), so an
// idle backend costs nothing and a loaded machine loses at most spinLimit per hand-off.
// spinLimit is well above the serial work between two ops of a decode step and far below a
// scheduler time slice. What it costs is CPU time, not wall time: during a prefill chunk's
// serial ops (norms, RoPE, SiLU over 512 rows on the caller) the worker spins its 50 µs before
// parking, about 7% more CPU time per prefill step on the 100M shape.
//
// Why chunks from a counter: on a shared machine a worker is often descheduled, or parked and
// slow to wake. With one fixed half per thread the caller then waited for it (a 100M decode
// step parked on a late worker in a quarter of its ops). Instead the range is cut into about
// chunksPerThread chunks per thread, and every thread takes the next chunk from an atomic
// counter until none is left: a late worker takes fewer chunks, or none. A worker that has not
// started when the caller has run out of chunks is cancelled (its slot goes from pending back to
// idle), so the caller waits only for workers that are running a chunk.
//
// Determinism: every output of the kernels run here depends only on its own index (a weight
// row's dot product, a panel's 16 columns, an attention item), never on which thread computes
// it or which other indexes share its chunk, so results are bitwise those of any other split.
//
// One goroutine at a time may call run (the backend is driven by one step at a time).
type pool struct {
	n       int
	spin    bool         // GOMAXPROCS gives every goroutine of the pool a thread (newPool)
	workers []poolWorker // index 0 is the caller's and unused
	faults  *faultLatch  // a chunk that faults on a changed file mapping ends here (see fault.go)
	closed  atomic.Bool
	// A worker's panic, raised on the caller by finish (workerTake).
	panicked atomic.Pointer[workerPanic]

	// The current run, written by the caller before it marks any slot pending and read by a
	// worker only after it moved its slot from pending to running.
	fn                func(worker, lo, hi int)
	total, per, count int

	_       [64]byte     // the fields below are written by every thread: keep them off the others' lines
	next    atomic.Int64 // the next chunk to take
	_       [56]byte
	waiting atomic.Bool // the caller has stopped spinning and waits on done
	done    chan struct{}
}

// spinLimit bounds each spinning wait (see pool).
const spinLimit = 50 * time.Microsecond

// chunksPerThread is how many chunks per thread run cuts a range into, when the grain allows:
// enough that a late thread leaves little for the others to wait on, few enough that taking a
// chunk (one atomic add on a shared line) stays far below streaming it.
const chunksPerThread = 8

// A worker slot's states: the caller makes it pending when it publishes a run, the worker makes
// it running when it joins and idle when it has run out of chunks; a pending slot the caller
// finds at the end of its own chunks it sets back to idle (the worker came too late).
const (
	slotIdle uint32 = iota
	slotPending
	slotRunning
)

// poolWorker is one worker's slot. Padded to its own cache lines, so that one worker polling
// its slot does not pull in another's.
type poolWorker struct {
	gen      atomic.Uint64 // bumped by the caller after it made the slot pending
	state    atomic.Uint32
	sleeping atomic.Bool // the worker has stopped spinning and waits on wake
	wake     chan struct{}
	_        [64]byte
}

func newPool(n int, faults *faultLatch) *pool {
	// With fewer Ps than goroutines a spinning one would hold the P that the one it waits
	// for needs: then every wait parks at once.
	p := &pool{n: n, spin: runtime.GOMAXPROCS(0) >= n, workers: make([]poolWorker, n), faults: faults, done: make(chan struct{}, 1)}
	for i := 1; i < n; i++ {
		p.workers[i].wake = make(chan struct{}, 1)
		go p.work(i)
	}
	return p
}

// work is worker w's loop: wait for the next generation of its slot, join the run if it is
// still pending, take chunks until none is left, report.
func (p *pool) work(w int) {
	debug.SetPanicOnFault(true)
	s := &p.workers[w]
	var seen uint64
	for {
		seen = p.waitChange(&s.gen, seen, &s.sleeping, s.wake)
		if p.closed.Load() {
			return
		}
		if !s.state.CompareAndSwap(slotPending, slotRunning) {
			continue // cancelled: the caller ran every chunk
		}
		p.workerTake(w)
		s.state.Store(slotIdle)
		if p.waiting.CompareAndSwap(true, false) {
			p.done <- struct{}{}
		}
	}
}

// take runs chunks of the current run until none is left; a fault ends it, not the process.
func (p *pool) take(w int) {
	defer p.faults.catch()
	for {
		c := int(p.next.Add(1)) - 1
		if c >= p.count {
			return
		}
		lo := c * p.per
		p.fn(w, lo, min(p.total, lo+p.per))
	}
}

// workerTake is take on a worker. A panic there (a kernel bug) would end the process, since
// nothing up a worker's stack recovers; it is kept instead and raised on the caller when the
// run finishes, where serve.Engine recovers it and fails only the step's requests.
func (p *pool) workerTake(w int) {
	defer func() {
		if r := recover(); r != nil {
			p.panicked.CompareAndSwap(nil, &workerPanic{val: r, stack: debug.Stack()})
		}
	}()
	p.take(w)
}

// workerPanic is a panic of a worker's chunk, with the worker's stack.
type workerPanic struct {
	val   any
	stack []byte
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

// signal makes worker w's slot pending and wakes the worker if it parked.
func (p *pool) signal(w int) {
	s := &p.workers[w]
	s.state.Store(slotPending)
	s.gen.Add(1)
	if s.sleeping.CompareAndSwap(true, false) {
		s.wake <- struct{}{}
	}
}

// busy says whether one of workers 1..used-1 is still running a chunk.
func (p *pool) busy(used int) bool {
	for w := 1; w < used; w++ {
		if p.workers[w].state.Load() == slotRunning {
			return true
		}
	}
	return false
}

// wait returns once none of workers 1..used-1 is running: it spins, then parks on done with the
// same handshake as waitChange (a worker that goes idle sends only if it clears waiting).
func (p *pool) wait(used int) {
	if p.spin {
		var start time.Time
		for i := 0; p.busy(used); i++ {
			if i&63 == 63 {
				if start.IsZero() {
					start = time.Now()
				} else if time.Since(start) > spinLimit {
					break
				}
			}
		}
	}
	for p.busy(used) {
		p.waiting.Store(true)
		if !p.busy(used) {
			if !p.waiting.CompareAndSwap(true, false) {
				<-p.done // a worker cleared it and sends
			}
			return
		}
		<-p.done
	}
}

// callerTake is take for the calling goroutine, which reads with SetPanicOnFault only for the
// op's duration.
func (p *pool) callerTake() {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	p.take(0)
}

func (p *pool) close() {
	p.closed.Store(true)
	for w := 1; w < p.n; w++ {
		p.signal(w)
	}
}

// run calls fn over [0, total) in contiguous chunks of at least grain items, on the calling
// goroutine and the workers (see pool). fn gets its thread's index, for scratch, and may be
// called several times per thread. A range under two grains runs on the caller alone.
func (p *pool) run(total, grain int, fn func(worker, lo, hi int)) {
	if total <= 0 {
		return
	}
	grain = max(grain, 1)
	p.fn, p.total = fn, total
	p.per = max(grain, (total+p.n*chunksPerThread-1)/(p.n*chunksPerThread))
	p.count = (total + p.per - 1) / p.per
	p.next.Store(0)
	used := 1
	if total >= 2*grain {
		used = min(p.n, p.count)
	}
	for w := 1; w < used; w++ {
		p.signal(w)
	}
	// Deferred, so that a panic in the caller's chunk (a bug, which serve.Engine survives and
	// steps on from) still returns only once no worker runs fn: the next run must find every
	// slot idle.
	defer p.finish(used)
	p.callerTake()
}

// finish ends a run: it cancels the workers that have not joined and waits for the others.
func (p *pool) finish(used int) {
	for w := 1; w < used; w++ {
		p.workers[w].state.CompareAndSwap(slotPending, slotIdle)
	}
	p.wait(used)
	p.fn = nil
	if p.panicked.Load() != nil { // a read first: a swap on every run would write a line the workers read
		wp := p.panicked.Swap(nil)
		panic(fmt.Sprintf("cpu: a pool worker panicked: %v\n%s", wp.val, wp.stack))
	}
}
