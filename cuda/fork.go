//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"fmt"
	"os"
	"strconv"

	"github.com/loraplex/loraplex/model"
)

// Forked products (LORAPLEX_PRODUCTS_FORK=on|off|N, Backend.SetProductsFork).
//
// The products of one input are independent (q, k and v; gate and up; a routed layer's gates
// beside them), yet they ran one after another on the backend's stream, and at a decode batch
// several leave most of the GPU idle. In goals-2026-12-07-s27a call 2 (Nsight Compute, H100,
// batch 64) k's and v's products were each cuBLAS's split-K kernel at 0.48 waves plus its
// reduce, ~13 us each for 8 MB of weights (0.65 TB/s), and each of a routed layer's seven gate
// products a 0.06-wave tile kernel plus a one-block reduce, ~10.6 us each and ~76 us a layer;
// q's, o's, gate's, up's and down's products fill about one wave.
//
// With the fork on, a products call of at most N rows (default forkRowsDefault) deals its
// products out: a router's gates (products of at most LP_SKINNY_MAX_COLS outputs, a batched run
// of them, gateRun, counting as one) to the backend's stream, every other product round robin to
// forkLanes side streams, each with its own cuBLAS handle and workspace. Each side lane first
// waits on an event the stream records once the call's bf16 input is written. The join comes
// later: the call leaves its lanes pending, and the next use of the stream joins them first
// (work(): the stream waits on each pending lane's event). Every op, copy, sync and capture end
// reaches the stream through work() or mainQueue(), so nothing after the call sees a product
// unfinished; TestStreamThroughWork holds the source to that. The one exception is a routed
// group (lp_route_group's joins): its routing shrinks read only the normed rows and the gates'
// logits, which the stream wrote, so they launch beside the lanes, and the stream joins them
// just before the expands that add into the products. A capture records the fork and the joins
// as graph edges, so a replay runs the same branches. The small kernels then run beside the
// large ones (v beside k, the gates and the routing shrinks beside q/k/v, gate/up, o and down)
// where they waited their turn before.
//
// Determinism: each product is the same cuBLAS call on the same inputs into its own output. Its
// only scratch is its own handle's workspace, which no two lanes share. So the outputs are
// bitwise the serial call's whatever order the lanes run in (TestProductsFork). Whether a call
// forks depends on its rows and the switch only, as the step key needs. Deterministic mode's
// products never come here (invariantShared), and forking stands aside in that mode anyway.
//
// Off: on an H100 (bench/results/gpu-h100/goals-2026-12-08-s30a) its tests passed
// (TestProductsFork, TestProductsForkFixtures, TestProductsForkRouted) and inside a CUDA graph a
// layer's products with their gates ran faster forked (bench/gpu -only products, batch 64: q/k/v
// and three gates 43.5 us against 54.4, gate/up and two gates 89.6 against 101.7, o and down with
// a gate 1.04-1.07x; without gates 1.00-1.02x), but the whole step did not move: batch-64 decode
// 0.981x, routed top-2 of 28 at batch 64 1.000x, the adapter rows 0.98-0.99x. Why the step keeps
// none of the products' gain is open: LORAPLEX_FORK_BESIDE=off (the routing shrinks after the
// join) tells whether the shrinks beside the products take it back, and a timeline (Nsight
// Systems) would show what overlaps.
const (
	forkDefault = false
	// forkRowsDefault: the most rows a forked call has with the switch on: decode batches. A
	// prefill chunk's products fill the GPU on their own.
	forkRowsDefault = 256
	// forkLanes: the side streams (LP_FORK_LANES): q, k and v each on its own, their gates on
	// the stream beside them.
	forkLanes = int(C.LP_FORK_LANES)
)

// forkBesideDefault: whether a routed group's routing shrinks run beside the lanes the products
// call before them left pending (LORAPLEX_FORK_BESIDE=on|off, SetForkBeside), or after the join
// as without the fork: on (as s30a measured the fork), not yet measured apart; an A/B of the two
// tells whether the shrinks gain more from the overlap than they take from the products' SMs.
const forkBesideDefault = true

// SetForkBeside turns the routing shrinks beside the lanes on or off for the following steps;
// recorded graphs hold the other order, so they are dropped.
func (b *Backend) SetForkBeside(on bool) { setSwitch(b, &b.forkBeside, on) }

// queue is where a product is issued: a stream and the cuBLAS handle bound to it.
type queue struct{ stream, blas C.uintptr_t }

// lane is one side stream of the fork, its own cuBLAS handle and workspace, and the event it
// records when its share of a call is queued (the join).
type lane struct {
	queue
	done C.uintptr_t
}

// blasWorkspaceBytes: each cuBLAS handle's fixed workspace, given up front so that its GEMMs
// can be recorded into graphs (cuBLAS must not allocate inside a capture).
const blasWorkspaceBytes = 32 << 20

// newBlas makes a cuBLAS handle on stream s with a workspace of its own.
func (b *Backend) newBlas(s C.uintptr_t) (C.uintptr_t, error) {
	var h C.uintptr_t
	if err := cudaError("cublas", C.s_cublas_create(&h, s)); err != nil {
		return 0, err
	}
	ws, err := b.malloc(blasWorkspaceBytes)
	if err != nil {
		return 0, err
	}
	if err := cudaError("cublas workspace", C.lp_cublas_set_workspace(C.P_void(h), C.P_void(C.uintptr_t(ws)), blasWorkspaceBytes)); err != nil {
		return 0, err
	}
	return h, nil
}

// makeLanes creates the fork's event and side lanes, each once: a failure keeps the lanes made
// before it (a later call makes the rest).
func (b *Backend) makeLanes() error {
	if b.forkEvent == 0 {
		if err := cudaError("fork event", C.s_event_create(&b.forkEvent)); err != nil {
			return err
		}
	}
	for len(b.lanes) < forkLanes {
		var l lane
		if err := cudaError("fork stream", C.s_stream_create(&l.stream)); err != nil {
			return err
		}
		h, err := b.newBlas(l.stream)
		if err != nil {
			return err
		}
		l.blas = h
		if err := cudaError("fork event", C.s_event_create(&l.done)); err != nil {
			return err
		}
		b.lanes = append(b.lanes, l)
	}
	return nil
}

// forkFromEnv reads LORAPLEX_PRODUCTS_FORK: on (calls of at most forkRowsDefault rows), off,
// or N (calls of at most N rows); the most rows a forked call has, 0 for off.
func forkFromEnv() int {
	v := os.Getenv("LORAPLEX_PRODUCTS_FORK")
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return n
	}
	if envSwitch("LORAPLEX_PRODUCTS_FORK", forkDefault) {
		return forkRowsDefault
	}
	return 0
}

// SetProductsFork makes products calls of at most rows rows (more than the GEMV kernel's) fork
// onto the side lanes for the following steps; 0 turns the fork off. The lanes are created the
// first time it is turned on; an error leaves it off. Recorded graphs hold the other launches,
// so they are dropped.
func (b *Backend) SetProductsFork(rows int) error {
	if rows < 0 {
		return fmt.Errorf("cuda: products fork of %d rows", rows)
	}
	if rows > 0 {
		if err := b.makeLanes(); err != nil {
			return err
		}
	}
	setSwitch(b, &b.forkRows, rows)
	return nil
}

// ForkedProducts is the number of products issued on the side lanes (direct or recorded; a
// replay issues nothing; for tests).
func (b *Backend) ForkedProducts() int { return b.forked }

// work is the backend's stream for the next op: the lanes a products call left pending join
// it first. Everything but the fork itself and a routed group's routing shrinks reaches the
// stream through here (or mainQueue).
func (b *Backend) work() C.uintptr_t {
	b.joinLanes()
	return b.stream
}

// mainQueue is the backend's stream and its cuBLAS handle, the pending lanes joined first (work).
func (b *Backend) mainQueue() queue { return queue{b.work(), b.blas} }

// joinLanes makes the stream wait for every pending lane.
func (b *Backend) joinLanes() {
	for _, l := range b.lanes[:b.pending] {
		b.ok("join", C.s_event_record(l.done, l.stream))
		b.ok("join wait", C.s_stream_wait(b.stream, l.done))
	}
	b.pending = 0
}

// laneJoins records each pending lane's event into joins for a launcher that starts beside the
// lanes and makes the stream wait on them before it reads what they write (lp_route_group's
// joins); the lanes count as joined. It returns how many it recorded.
func (b *Backend) laneJoins(joins *[forkLanes]C.uintptr_t) C.int {
	n := b.pending
	for i, l := range b.lanes[:n] {
		b.ok("join", C.s_event_record(l.done, l.stream))
		joins[i] = l.done
	}
	b.pending = 0
	return C.int(n)
}

// forking deals one products call's products to the stream and the lanes (productsBF16); a value
// on the caller's stack, so a call allocates nothing.
type forking struct {
	b      *Backend
	lanes  int  // side lanes this call may use: 0 when it does not fork
	stream bool // the next product that is not a gate goes to the stream (a call without gates)
	dealt  int  // products dealt to the lanes so far
	used   int  // side lanes that have joined the fork (they are used in order)
}

// A product of at most LP_SKINNY_MAX_COLS outputs counts as a gate and stays on the stream, where
// a routed group's routing shrinks read its logits without waiting on the lanes (routeGroup):
// every gate routeGroup takes (at most LP_ROUTE_MAX_ROWS rows) must count (a negative array
// length otherwise).
var _ [int(C.LP_SKINNY_MAX_COLS) - int(C.LP_ROUTE_MAX_ROWS)]struct{}

// isGate reports whether the product with weights w counts as a router's gate (fork.go).
func isGate(w model.Tensor) bool { return w.Rows <= int(C.LP_SKINNY_MAX_COLS) }

// fork starts dealing the products of a call of rows rows, gates of them gates. Lanes an earlier
// call left pending join first: each call's fork follows everything before it. A call without
// gates keeps its first product on the stream (a lone product, SwiGLU's down projection, then
// never forks), the rest going to the lanes.
func (b *Backend) fork(rows, gates int) forking {
	b.joinLanes()
	f := forking{b: b, stream: gates == 0}
	if rows <= b.forkRows && !b.batchInvariant && len(b.lanes) > 0 {
		f.lanes = len(b.lanes)
	}
	return f
}

// next is the queue of the call's next product: the stream for a gate (or for everything when
// the call does not fork), else the next lane. A side lane's first product follows the stream's
// work so far (the call's input): the stream records the fork event once a call and the lane
// waits on it. A capture already abandoned (broken), or a fork the driver refused, keeps the
// product on the stream: a lane outside the capture would run it for real, beside the rerun.
func (f *forking) next(gate bool) queue {
	b := f.b
	main := queue{b.stream, b.blas} // the pending lanes are this call's: nothing before it is pending
	if gate || f.lanes == 0 || b.mode == modeCapture && b.broken {
		return main
	}
	if f.stream {
		f.stream = false
		return main
	}
	l := f.dealt%f.lanes + 1
	if l > f.used {
		if f.used == 0 && !b.ok("fork", C.s_event_record(b.forkEvent, b.stream)) {
			return main
		}
		if !b.ok("fork wait", C.s_stream_wait(b.lanes[l-1].stream, b.forkEvent)) {
			return main
		}
		f.used = l
	}
	f.dealt++
	b.forked++
	return b.lanes[l-1].queue
}

// leave ends the call's dealing: its lanes stay pending until the stream's next use joins them.
func (f *forking) leave() { f.b.pending = max(f.b.pending, f.used) }
