package adaptercache

import (
	"slices"
	"sync"
)

// streamBuffers keeps the buffers that held the streams of closed device-decoded loads
// (LoadCompressedEncoded) for the next load: a buffer already used is resident memory the
// readers copy into at memory speed, where a fresh one costs its zeroing (24 MB for a rank-16
// Llama-3-8B adapter: ~1.7 ms on one core) or, fresh from the OS, a page fault per 4 KiB page
// during the copy, which measured 4x the copy itself on the CPU machine and is the part of
// the host stage that varied most between machines.
var streamBuffers = &bufferPool{limit: streamBufferRetain}

// streamBufferRetain bounds the memory the pool keeps while no load uses it: a few rank-16
// Llama-3-8B adapters' streams (24 MB each), which covers the loads a server runs at once.
const streamBufferRetain = 128 << 20

// bufferPool keeps released byte buffers, up to limit bytes in all, for reuse. Its buffers
// are not zeroed: every user overwrites what it reads.
type bufferPool struct {
	mu    sync.Mutex
	free  [][]byte
	held  int
	limit int
}

// get returns a free buffer of at least n bytes and at most 2n (so a small adapter does not
// hold a large adapter's buffer), resliced to n, or nil if none fits.
func (p *bufferPool) get(n int) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	best := -1
	for i, b := range p.free {
		if len(b) >= n && len(b) <= 2*n && (best < 0 || len(b) < len(p.free[best])) {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	b := p.free[best]
	p.free = slices.Delete(p.free, best, best+1)
	p.held -= len(b)
	return b[:n]
}

// put gives b (its whole capacity) back to the pool; the pool keeps it while it holds less
// than its limit, dropping its oldest buffers to make room. The caller must not use b again.
func (p *bufferPool) put(b []byte) {
	b = b[:cap(b)]
	if len(b) == 0 || len(b) > p.limit {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.held+len(b) > p.limit {
		p.held -= len(p.free[0])
		p.free = slices.Delete(p.free, 0, 1)
	}
	p.free = append(p.free, b)
	p.held += len(b)
}
