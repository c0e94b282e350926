package adaptercache

import (
	"container/list"
	"context"
	"fmt"
	"time"
)

// Ticket is a request's place in the queue for an adapter's device copy. While a ticket is open
// the cache moves the adapter towards the device on its own goroutines (disk -> host -> a device
// slot, slots handed to tickets in arrival order) and never evicts it, so a scheduler can keep
// the request in its own queue, run other requests meanwhile and take the lease when it is
// ready without ever blocking. Every ticket ends in exactly one of: a lease from TryLease, an
// error from TryLease, or Cancel.
type Ticket struct {
	c    *Cache
	name string
	e    *entry
	el   *list.Element // in c.queue; nil once the ticket is done
}

// Want opens a ticket for name (registered, or found in Options.Dirs) and starts loading it.
func (c *Cache) Want(name string) (*Ticket, error) {
	c.mu.Lock()
	defer c.unlock()
	return c.want(name)
}

func (c *Cache) want(name string) (*Ticket, error) {
	if c.closed {
		return nil, ErrClosed
	}
	e, err := c.lookup(name)
	if err != nil {
		return nil, err
	}
	c.countLookup(e)
	t := &Ticket{c: c, name: name, e: e}
	e.waiting++
	t.el = c.queue.PushBack(t)
	c.changed() // unlock's kick starts the load
	return t, nil
}

// TryLease returns the lease once the adapter is on the device, or the error that ended the
// ticket (the adapter failed to load, was unregistered, or the cache closed); (nil, nil) means
// not yet: ask again after Changed fires. After a lease or an error the ticket is done.
func (t *Ticket) TryLease() (*Lease, error) {
	c := t.c
	c.mu.Lock()
	defer c.unlock()
	return t.try()
}

// try is TryLease with mu held.
func (t *Ticket) try() (*Lease, error) {
	c := t.c
	if t.el == nil {
		return nil, fmt.Errorf("adaptercache: ticket for %q already done", t.name)
	}
	if c.closed {
		t.done()
		return nil, ErrClosed
	}
	if err := t.follow(); err != nil {
		t.done()
		return nil, err
	}
	e := t.e
	c.retryIfDue(e)
	switch e.state {
	case StateDevice:
		t.done()
		e.refs++
		c.leases++
		e.lastUsed = time.Now()
		c.devIdle.Remove(e)
		if e.host != nil {
			c.hostLRU.Get(e)
		}
		return &Lease{c: c, e: e}, nil
	case StateFailed:
		t.done()
		return nil, e.err
	}
	return nil, nil
}

// Cancel gives up the ticket (the request went away); a no-op once the ticket is done.
func (t *Ticket) Cancel() {
	c := t.c
	c.mu.Lock()
	defer c.unlock()
	if t.el != nil {
		t.done()
		c.changed()
	}
}

// done takes the ticket out of the queue. Called with mu held.
func (t *Ticket) done() {
	c, e := t.c, t.e
	c.queue.Remove(t.el)
	t.el = nil
	if e.waiting--; e.waiting == 0 && e.host != nil {
		c.enforceHostBudget(e) // a host copy kept for this ticket may go now, but not e's own
	}
}

// follow moves the ticket to its name's current registration when the one it was opened on
// was replaced or unregistered. Called with mu held.
func (t *Ticket) follow() error {
	if !t.e.removed {
		return nil
	}
	e, err := t.c.lookup(t.name)
	if err != nil {
		return err
	}
	t.e.waiting--
	t.e = e
	e.waiting++
	return nil
}

// kick moves the queued tickets' adapters along, in ticket order: for those on disk a load, and
// for those in host memory a free device slot or else the slot of the least recently used
// unleased copy that no older ticket wants. A copy only younger tickets want can be evicted, so
// the oldest ticket always gets the next unleased slot and no request starves behind a stream
// of requests for resident adapters. Loads start while the host tier has room for them, and
// always for the first MaxDeviceSlots adapters in the queue, which are next for the device:
// a long queue of distinct adapters does not pull them all into memory at once.
// Called by unlock after any state change.
func (c *Cache) kick() {
	if c.closed || c.queue.Len() == 0 {
		return
	}
	clear(c.claimed)
	hostN, hostB, counted := 0, int64(0), false
	for el := c.queue.Front(); el != nil; el = el.Next() {
		t := el.Value.(*Ticket)
		if t.e.removed {
			if t.follow() != nil {
				continue // TryLease reports it
			}
		}
		e := t.e
		c.retryIfDue(e)
		switch e.state {
		case StateDisk:
			if !counted {
				hostN, hostB = c.hostCommitted()
				counted = true
			}
			if len(c.claimed) < c.opt.MaxDeviceSlots || c.hostFits(hostN, hostB, e) {
				c.startLoad(e)
				hostN, hostB = hostN+1, hostB+e.bytes
			}
		case StateHost:
			if c.devUsed < c.opt.MaxDeviceSlots {
				c.devUsed++
				c.startUpload(e, nil)
			} else if v := c.evictionVictim(c.claimed); v != nil {
				c.stats.DeviceEvictions++
				c.startUpload(e, c.evictDevice(v))
			}
		}
		c.claimed[e] = true
	}
}

// Acquire returns a lease on name's device copy, loading and uploading it as needed. When every
// device slot is leased it waits for a Release; it returns ctx.Err() if ctx ends first, and
// the load error if the adapter cannot be loaded.
func (c *Cache) Acquire(ctx context.Context, name string) (*Lease, error) {
	c.mu.Lock()
	t, err := c.want(name)
	for err == nil {
		var l *Lease
		if l, err = t.try(); l != nil || err != nil {
			c.unlock()
			return l, err
		}
		wake := c.wake
		c.unlock()
		select {
		case <-ctx.Done():
			t.Cancel()
			return nil, ctx.Err()
		case <-wake:
		}
		c.mu.Lock()
	}
	c.unlock()
	return nil, err
}

// retryIfDue turns a failed entry whose backoff has passed back into one on disk.
func (c *Cache) retryIfDue(e *entry) {
	if e.state == StateFailed && time.Since(e.failedAt) >= c.opt.RetryAfter {
		e.state, e.err = StateDisk, nil
		c.changed()
	}
}

// countLookup records where a request found its adapter.
func (c *Cache) countLookup(e *entry) {
	switch e.state {
	case StateDevice:
		c.stats.DeviceHits++
	case StateHost, StateUploading:
		c.stats.HostHits++
	default:
		c.stats.Misses++
	}
}
