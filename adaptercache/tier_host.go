package adaptercache

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/loraplex/loraplex/model"
)

// hostCopy is an adapter in host memory. Its tensors may point into memory that closer
// releases, so it must stay open while anything reads them: an upload in progress, or a device
// copy on a backend that uploads by aliasing (pins counts those).
type hostCopy struct {
	ha      *model.HostAdapter
	closer  io.Closer
	pins    int
	dropped bool // no longer in the host tier: close when the last pin goes
	// digested: ha.Digest is set. The first upload hashes the copy beside the device copy
	// (see upload) and sets it before the device copy can be leased; later uploads reuse it.
	digested bool
}

// unpin drops one pin and closes the copy if it was the last one of a dropped copy. Called with
// mu held; the close runs after unlock.
func (c *Cache) unpin(h *hostCopy) {
	h.pins--
	c.closeIfUnused(h)
	if h.pins == 0 && !h.dropped {
		c.enforceHostBudget(nil) // the tier may have gone over its budget while h was pinned
	}
}

func (c *Cache) closeIfUnused(h *hostCopy) {
	if h.dropped && h.pins == 0 && h.closer != nil {
		cl := h.closer
		h.closer = nil
		c.pending = append(c.pending, func() { cl.Close() })
	}
}

// startLoad reads e from disk on a new goroutine. Called with mu held, e on disk.
func (c *Cache) startLoad(e *entry) {
	e.state = StateLoading
	c.loading++
	c.changed()
	c.wg.Add(1)
	go c.load(e)
}

func (c *Cache) load(e *entry) {
	defer c.wg.Done()
	start := time.Now()
	ha, closer, err := c.readDisk(e)
	if err == nil {
		if err = checkRank(ha, c.opt.MaxRank); err != nil && closer != nil {
			closer.Close()
		}
	}
	took := time.Since(start)
	c.mu.Lock()
	defer c.unlock()
	c.loading--
	c.stats.LoadSeconds += took.Seconds()
	c.changed()
	if c.onLoad != nil {
		c.onLoad(e.name, took, err) // before any waiter wakes: whoever sees the load sees it counted
	}
	if err != nil {
		c.stats.LoadFailures++
		e.state, e.err, e.failedAt = StateFailed, err, time.Now()
		return
	}
	c.stats.Loads++
	h := &hostCopy{ha: ha, closer: closer}
	if e.removed || c.closed {
		h.dropped = true
		c.closeIfUnused(h)
		return
	}
	e.host, e.bytes, e.rank, e.state = h, ha.Bytes, adapterRank(ha), StateHost
	c.hostLRU.Add(e, struct{}{})
	c.hostN++
	c.hostB += ha.Bytes
	c.enforceHostBudget(e)
}

// readDisk runs the loader for e within Options.LoadTimeout and until Close. A read that
// overruns either is abandoned on its own goroutine, which closes what it returns. What it
// read is hashed (Digest) by its first upload, beside the copy to the device.
func (c *Cache) readDisk(e *entry) (*model.HostAdapter, io.Closer, error) {
	type result struct {
		ha     *model.HostAdapter
		closer io.Closer
		err    error
	}
	done := make(chan result, 1)
	go func() {
		ha, closer, err := c.loader(e.path, e.name, c.opt.Config)
		done <- result{ha, closer, err}
	}()
	var timeout <-chan time.Time
	if c.opt.LoadTimeout > 0 {
		t := time.NewTimer(c.opt.LoadTimeout)
		defer t.Stop()
		timeout = t.C
	}
	abandon := func() {
		go func() {
			if r := <-done; r.closer != nil {
				r.closer.Close()
			}
		}()
	}
	select {
	case r := <-done:
		return r.ha, r.closer, r.err
	case <-timeout:
		abandon()
		return nil, nil, fmt.Errorf("adapter %q: reading it took longer than %v: %w", e.name, c.opt.LoadTimeout, context.DeadlineExceeded)
	case <-c.closing:
		abandon()
		return nil, nil, ErrClosed
	}
}

// enforceHostBudget evicts the least recently used host copies until the tier fits its limits,
// skipping keep (just loaded: it is not evicted to make room for itself) and copies in use:
// pinned by an upload or an aliasing device copy, or awaited by a request. Called with mu held.
func (c *Cache) enforceHostBudget(keep *entry) {
	over := func() bool {
		return (c.opt.MaxHostAdapters > 0 && c.hostN > c.opt.MaxHostAdapters) ||
			(c.opt.MaxHostBytes > 0 && c.hostB > c.opt.MaxHostBytes)
	}
	if !over() {
		return
	}
	for _, e := range c.hostLRU.Keys() { // oldest first
		if !over() {
			return
		}
		if e == keep || e.host.pins > 0 || e.waiting > 0 || e.state == StateUploading {
			continue
		}
		c.stats.HostEvictions++
		c.dropHost(e)
		if e.state == StateHost {
			e.state = StateDisk
		}
	}
}

// hostRoom reports whether the host tier can take e besides what it cannot give up (see
// hostCommitted). Called with mu held.
func (c *Cache) hostRoom(e *entry) bool {
	n, b := c.hostCommitted()
	return c.hostFits(n, b, e)
}

// hostCommitted counts the host copies the tier cannot give up (pinned, uploading or wanted by
// a ticket) and the loads in progress. Evictable copies do not count: a load evicts them when it
// lands. Called with mu held.
func (c *Cache) hostCommitted() (n int, b int64) {
	n = c.loading
	if c.opt.MaxHostAdapters == 0 && c.opt.MaxHostBytes == 0 {
		return n, 0
	}
	for _, h := range c.hostLRU.Keys() {
		if h.host.pins > 0 || h.waiting > 0 || h.state == StateUploading {
			n++
			b += h.host.ha.Bytes
		}
	}
	return n, b
}

// hostFits reports whether e fits beside n committed copies of b bytes (e.bytes is 0 until e
// has been loaded once).
func (c *Cache) hostFits(n int, b int64, e *entry) bool {
	return (c.opt.MaxHostAdapters == 0 || n < c.opt.MaxHostAdapters) &&
		(c.opt.MaxHostBytes == 0 || b+e.bytes <= c.opt.MaxHostBytes)
}

// dropHost takes e's host copy out of the host tier, closing it now or when its last pin goes.
// Called with mu held.
func (c *Cache) dropHost(e *entry) {
	h := e.host
	if h == nil {
		return
	}
	e.host = nil
	c.hostLRU.Remove(e)
	c.hostN--
	c.hostB -= h.ha.Bytes
	h.dropped = true
	c.closeIfUnused(h)
}
