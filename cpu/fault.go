package cpu

import (
	"fmt"
	"runtime/debug"
	"sync/atomic"

	"github.com/loraplex/loraplex/model/safetensors"
)

// The CPU backend computes from the checkpoint's memory mapping (Upload keeps F32 and BF16
// matrices in place). If the file shrinks under the mapping while the server runs (truncated,
// or overwritten in place by a plain cp, which truncates first), the next read of a page past
// its new end faults with SIGBUS, and a Go program dies of it. So every goroutine that runs a
// kernel reads with debug.SetPanicOnFault on (the pool's workers for their whole life, the
// step goroutine for the duration of each op that reads weights: the setting is per
// goroutine), a fault is recovered where it happens, and it becomes the backend's sticky error:
// Err reports it (the engine's health turns NOT_SERVING and new requests are refused), Read
// returns it (so the step, and every request in it, fails with it), and the ops that read
// weights return at once from then on, so the mapping is not touched again. The weights cannot
// be trusted after such a change, so nothing tries to recover them: the server must restart.

// faultLatch holds the first fault, shared by the backend and its pool.
type faultLatch struct{ err atomic.Pointer[error] }

// catch is deferred around kernel work: it recovers a memory fault into the latch and lets
// every other panic go on.
func (l *faultLatch) catch() {
	if r := recover(); r != nil {
		if !safetensors.IsFault(r) {
			panic(r)
		}
		l.set(r)
	}
}

// set keeps the first fault. The error leaves the fault's address out: it reaches clients.
func (l *faultLatch) set(any) {
	err := fmt.Errorf("cpu: reading the model's weights faulted: %w; the backend has stopped, restart the server", safetensors.ErrFileChanged)
	l.err.CompareAndSwap(nil, &err)
}

func (l *faultLatch) get() error {
	if p := l.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Err returns the backend's sticky failure: a fault reading the model's mapping, or nil.
func (b *Backend) Err() error { return b.faults.get() }

// guard is deferred, with the previous SetPanicOnFault setting, by every op that reads weights
// on the calling goroutine: defer b.guard(debug.SetPanicOnFault(true)).
func (b *Backend) guard(prev bool) {
	defer debug.SetPanicOnFault(prev)
	if r := recover(); r != nil {
		if !safetensors.IsFault(r) {
			panic(r)
		}
		b.faults.set(r)
	}
}
