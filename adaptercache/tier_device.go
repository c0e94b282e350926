package adaptercache

import (
	"runtime"
	"time"

	"github.com/loraplex/loraplex/model"
)

// eviction is a device copy taken out of its slot, to be freed by whoever takes the slot over.
type eviction struct {
	dev  *model.Adapter
	host *hostCopy // pinned by dev (aliasing backends), unpinned once dev is freed
}

// evictionVictim is the least recently used device copy that no lease references and no
// ticket in keep wants, or nil. Called with mu held.
func (c *Cache) evictionVictim(keep map[*entry]bool) *entry {
	for _, e := range c.devIdle.Keys() { // oldest first
		if !keep[e] {
			return e
		}
	}
	return nil
}

// evictDevice takes v's unreferenced device copy out of its slot and returns it for freeing; the
// slot stays counted, handed to the caller. v falls back to its host copy, or to disk. Called
// with mu held.
func (c *Cache) evictDevice(v *entry) *eviction {
	ev := &eviction{dev: v.dev, host: v.devHost}
	c.devIdle.Remove(v)
	c.devBytes -= v.dev.Bytes
	v.dev, v.devHost = nil, nil
	v.state = StateDisk
	if v.host != nil {
		v.state = StateHost
	}
	return ev
}

// freeDevice frees e's unreferenced device copy and then gives back its slot. The backend call
// runs after mu is released. Called with mu held.
func (c *Cache) freeDevice(e *entry) {
	ev := c.evictDevice(e)
	c.pending = append(c.pending, func() {
		c.freeEvicted(ev)
		c.mu.Lock()
		c.devUsed--
		c.changed()
		c.unlock()
	})
}

// freeEvicted frees an evicted device copy and then unpins the host copy it aliased. Called
// without mu.
func (c *Cache) freeEvicted(ev *eviction) {
	ev.dev.Free(c.opt.Backend)
	if ev.host != nil {
		c.mu.Lock()
		c.unpin(ev.host)
		c.unlock()
	}
}

// startUpload copies e's host copy to the device on a new goroutine, into a slot the caller has
// reserved (freeing ev there first when the slot was taken by eviction). Called with mu held.
func (c *Cache) startUpload(e *entry, ev *eviction) {
	e.state = StateUploading
	h := e.host
	h.pins++
	c.changed()
	c.wg.Add(1)
	go c.upload(e, h, ev, !h.digested)
}

// upload copies h to the device; with hash (h's first upload) it also computes h's content
// digest on another goroutine meanwhile: the copy to the device needs no digest, and the
// digest needs only h's host memory, which this upload's pin keeps open, so its time (the
// SHA-256 of every tensor's bytes: 1.7-1.9 ms of a compressed 8B adapter's 10.6 ms cold load
// on an H100, as long as the copy itself) is spent beside the copy instead of before it.
// Both end before the device copy is published under mu, and the digest is set on it and
// on h then: no lease, and so no request, ever sees the adapter without its digest (the
// engine's prefix cache tells adapters apart by it, never by name). UploadSeconds is the
// stage until both are done; DigestSeconds is the hashing's own time, within it.
func (c *Cache) upload(e *entry, h *hostCopy, ev *eviction, hash bool) {
	defer c.wg.Done()
	if ev != nil {
		c.freeEvicted(ev)
	}
	start := time.Now()
	var job *hashJob
	var hashing chan time.Duration
	if hash {
		// The hashing only reads h.ha, as UploadAdapter does; h.ha.Digest is written below,
		// once both are done. It starts on one goroutine fewer than GOMAXPROCS, so a P stays
		// free for this one: an upload back from a cgo call (the device copy) does not queue
		// behind the hashers for a P. Once the upload is done, this goroutine hashes what is
		// left beside them (with a short upload, as on the CPU backend, that is most of it).
		job = newHashJob(h.ha)
		hashing = make(chan time.Duration, 1)
		go func() {
			t0 := time.Now()
			job.run(max(1, runtime.GOMAXPROCS(0)-1))
			hashing <- time.Since(t0)
		}()
	}
	dev, err := model.UploadAdapter(c.opt.Backend, c.opt.Config, h.ha)
	var digest [32]byte
	var hashed time.Duration
	if hash {
		job.work()
		hashed = <-hashing // always waited for: it reads the memory this upload's pin keeps open
		digest = job.digest()
	}
	took := time.Since(start)
	c.mu.Lock()
	defer c.unlock()
	c.stats.UploadSeconds += took.Seconds()
	if hash {
		h.ha.Digest, h.digested = digest, true
		c.stats.DigestSeconds += hashed.Seconds()
	}
	if err == nil {
		dev.Digest = h.ha.Digest // UploadAdapter copied it before it was computed
	}
	c.changed()
	if err != nil {
		// UploadAdapter has freed what it uploaded. Out of device memory is reported the same
		// way as a bad tensor: the request fails, and a later one retries after the backoff.
		c.stats.UploadFailures++
		c.devUsed--
		c.unpin(h)
		if !e.removed {
			c.dropHost(e)
			e.state, e.err, e.failedAt = StateFailed, err, time.Now()
		}
		return
	}
	c.stats.Uploads++
	if e.removed || c.closed {
		c.unpin(h)
		c.pending = append(c.pending, func() {
			dev.Free(c.opt.Backend)
			c.mu.Lock()
			c.devUsed--
			c.changed()
			c.unlock()
		})
		return
	}
	e.dev, e.state = dev, StateDevice
	c.devBytes += dev.Bytes
	if c.opt.UploadCopies {
		c.unpin(h)
	} else {
		e.devHost = h // the device copy reads h's memory: h stays open while it lives
	}
	c.devIdle.Add(e, struct{}{})
}
