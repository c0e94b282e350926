package adaptercache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/loraplex/loraplex/model"
)

// Errors returned by the cache. Load failures are returned as the loader's error (an
// *AdapterError or an I/O error naming the adapter), unchanged, so errors.Is / errors.As work.
var (
	ErrUnknownAdapter = errors.New("adaptercache: unknown adapter")
	ErrClosed         = errors.New("adaptercache: cache closed")
)

// LoaderFunc reads one adapter from path into host memory, validated against cfg. The closer
// releases what the HostAdapter's tensors point into (a file mapping); nil means nothing to close.
type LoaderFunc func(path, name string, cfg *model.Config) (*model.HostAdapter, io.Closer, error)

// Options configure a Cache. Zero host limits mean no limit.
type Options struct {
	Config  *model.Config
	Backend model.Backend
	// Dirs are searched in order for DIR/NAME when an unregistered adapter is asked for.
	Dirs []string
	// MaxDeviceSlots is how many adapters may be on the device at once (--max-loras).
	MaxDeviceSlots int
	// MaxHostAdapters and MaxHostBytes bound the host tier (--max-cpu-loras, a byte budget).
	// Host copies that back a device copy or an upload in progress cannot be evicted, so the
	// tier may exceed its budget by those.
	MaxHostAdapters int
	MaxHostBytes    int64
	// UploadCopies says the backend copies tensors on Upload (CUDA), so the host copy may be
	// dropped while the device copy lives. False (the CPU backend, which aliases the file
	// mapping) keeps the host copy pinned as long as its device copy exists.
	UploadCopies bool
	// Loader defaults to DefaultLoader.
	Loader LoaderFunc
	// RetryAfter is how long a failed adapter answers with its error before the next request
	// tries to load it again (default 30s); Register retries at once.
	RetryAfter time.Duration
}

// Cache is a registry of adapters by name and their copies in two tiers: host memory (a
// validated HostAdapter, usually aliasing a read-only file mapping) and device slots (a
// model.Adapter uploaded through the Backend). Requests take a Lease on a device copy; a leased
// copy is never evicted or freed, so the forward pass can read it until Release.
//
// All methods are safe for concurrent use. Loads and uploads run on their own goroutines and
// call only Backend.Upload and Backend.Free, so the engine's loop never waits on a load.
type Cache struct {
	opt    Options
	loader LoaderFunc

	mu      sync.Mutex
	entries map[string]*entry
	// wake is closed (and replaced) on every state change; waiters select on it.
	wake chan struct{}
	// hostLRU holds the entries that have a host copy, in recency order.
	hostLRU *simplelru.LRU[*entry, struct{}]
	// devIdle holds the entries whose device copy no lease references, in recency order: the
	// eviction candidates of the device tier.
	devIdle *simplelru.LRU[*entry, struct{}]
	// devUsed counts device slots taken: resident copies (including those of unregistered
	// adapters still leased), uploads in progress and frees not yet done.
	devUsed  int
	devBytes int64
	hostN    int
	hostB    int64
	leases   int
	stats    Stats
	closed   bool
	// pending are actions (closing files, freeing device copies) collected under mu and run
	// after it is released, so no I/O or backend call happens while holding the lock.
	pending []func()
	wg      sync.WaitGroup
}

// entry is one registration of a name. Re-registering a name makes a new entry; the old one
// lives on, unlisted, until its last lease is released.
type entry struct {
	name, path string
	state      State
	host       *hostCopy
	dev        *model.Adapter
	devHost    *hostCopy // the host copy dev aliases (pinned), nil with UploadCopies
	refs       int       // leases
	waiting    int       // Acquire calls waiting for this entry: it is not evicted under them
	removed    bool
	err        error
	failedAt   time.Time
	lastUsed   time.Time
	bytes      int64 // adapter bytes once known
}

// New makes a cache. Config and Backend are required, and MaxDeviceSlots must be positive.
func New(opt Options) (*Cache, error) {
	if opt.Config == nil || opt.Backend == nil {
		return nil, fmt.Errorf("adaptercache: Options.Config and Options.Backend are required")
	}
	if opt.MaxDeviceSlots <= 0 {
		return nil, fmt.Errorf("adaptercache: MaxDeviceSlots must be positive, got %d", opt.MaxDeviceSlots)
	}
	if opt.MaxHostAdapters < 0 || opt.MaxHostBytes < 0 {
		return nil, fmt.Errorf("adaptercache: negative host limits")
	}
	if opt.RetryAfter <= 0 {
		opt.RetryAfter = 30 * time.Second
	}
	c := &Cache{opt: opt, loader: opt.Loader, entries: map[string]*entry{}, wake: make(chan struct{})}
	if c.loader == nil {
		c.loader = DefaultLoader
	}
	// The LRUs are used as recency lists only: their size is never reached, because eviction
	// must skip pinned and leased entries, which simplelru's own eviction cannot do.
	c.hostLRU, _ = simplelru.NewLRU[*entry, struct{}](math.MaxInt, nil)
	c.devIdle, _ = simplelru.NewLRU[*entry, struct{}](math.MaxInt, nil)
	return c, nil
}

// unlock releases mu and then runs the actions collected while holding it.
func (c *Cache) unlock() {
	p := c.pending
	c.pending = nil
	c.mu.Unlock()
	for _, f := range p {
		f()
	}
}

// changed wakes every waiter. Called with mu held.
func (c *Cache) changed() {
	close(c.wake)
	c.wake = make(chan struct{})
}

// Changed returns a channel closed at the next state change of any adapter, for a scheduler
// that polls with TryAcquire instead of blocking in Acquire.
func (c *Cache) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wake
}

// Register lists name as the adapter at path (a PEFT folder, or whatever the Loader reads).
// Registering the same path again is a no-op unless the adapter failed, which retries it now.
// A different path replaces the registration: leases on the old copy stay valid until
// released, new requests get the new one.
func (c *Cache) Register(name, path string) error {
	if !ValidName(name) {
		return fmt.Errorf("adaptercache: invalid adapter name %q", name)
	}
	c.mu.Lock()
	defer c.unlock()
	if c.closed {
		return ErrClosed
	}
	if e := c.entries[name]; e != nil {
		if e.path == path && e.state != StateFailed {
			return nil
		}
		c.drop(e)
	}
	c.entries[name] = &entry{name: name, path: path, state: StateDisk}
	c.changed()
	return nil
}

// Unregister removes name from the registry and reports whether it was listed. Its copies are
// dropped now where unused, else when the last lease is released or the load in progress ends.
func (c *Cache) Unregister(name string) bool {
	c.mu.Lock()
	defer c.unlock()
	e := c.entries[name]
	if e == nil {
		return false
	}
	c.drop(e)
	c.changed()
	return true
}

// drop unlists e and releases what nothing uses. Called with mu held.
func (c *Cache) drop(e *entry) {
	if c.entries[e.name] == e {
		delete(c.entries, e.name)
	}
	e.removed = true
	c.dropHost(e)
	if e.dev != nil && e.refs == 0 {
		c.devIdle.Remove(e)
		c.freeDevice(e)
	}
	// An entry that is loading or uploading is cleaned up by its goroutine, which sees removed.
}

// Prefetch starts reading name from disk into host memory if it is in neither tier, without
// waiting, so a queued request finds it there. It reports unknown names and closed caches only.
func (c *Cache) Prefetch(name string) error {
	c.mu.Lock()
	defer c.unlock()
	if c.closed {
		return ErrClosed
	}
	e, err := c.lookup(name)
	if err != nil {
		return err
	}
	c.retryIfDue(e)
	switch e.state {
	case StateDisk:
		c.startLoad(e)
	case StateHost:
		c.hostLRU.Get(e) // asked for again: keep it
	}
	return nil
}

// Acquire returns a lease on name's device copy, loading it from disk and uploading it as
// needed. When every device slot is leased it waits for a Release; it returns ctx.Err() if ctx
// ends first, and the load error if the adapter cannot be loaded.
func (c *Cache) Acquire(ctx context.Context, name string) (*Lease, error) {
	first := true
	c.mu.Lock()
	for {
		if c.closed {
			c.unlock()
			return nil, ErrClosed
		}
		e, err := c.lookup(name)
		if err != nil {
			c.unlock()
			return nil, err
		}
		if first {
			c.countLookup(e)
			first = false
		}
		l, err := c.advance(e)
		if l != nil || err != nil {
			c.unlock()
			return l, err
		}
		wake := c.wake
		e.waiting++
		c.unlock()
		select {
		case <-ctx.Done():
		case <-wake:
		}
		c.mu.Lock()
		if e.waiting--; e.waiting == 0 && e.host != nil {
			c.enforceHostBudget(e) // a copy kept for this waiter may now go, but not e's own
		}
		if err := ctx.Err(); err != nil {
			c.unlock()
			return nil, err
		}
	}
}

// TryAcquire is Acquire for a caller that must not block (the engine's loop): it returns a
// lease if name is on the device, the load error if it failed, and otherwise starts or
// continues the load and returns (nil, nil); Changed tells when to ask again. A (nil, nil)
// answer does not protect the adapter from eviction, so a scheduler should retry soon.
func (c *Cache) TryAcquire(name string) (*Lease, error) {
	c.mu.Lock()
	defer c.unlock()
	if c.closed {
		return nil, ErrClosed
	}
	e, err := c.lookup(name)
	if err != nil {
		return nil, err
	}
	c.countLookup(e)
	return c.advance(e)
}

// advance moves e one tier towards the device and returns a lease once it is there. Called
// with mu held; (nil, nil) means wait for the next state change.
func (c *Cache) advance(e *entry) (*Lease, error) {
	c.retryIfDue(e)
	switch e.state {
	case StateDevice:
		e.refs++
		c.leases++
		e.lastUsed = time.Now()
		c.devIdle.Remove(e)
		if e.host != nil {
			c.hostLRU.Get(e)
		}
		return &Lease{c: c, e: e}, nil
	case StateFailed:
		return nil, e.err
	case StateDisk:
		c.startLoad(e)
	case StateHost:
		c.hostLRU.Get(e)
		if c.devUsed < c.opt.MaxDeviceSlots {
			c.devUsed++
			c.startUpload(e, nil)
		} else if v := c.evictionVictim(); v != nil {
			c.stats.DeviceEvictions++
			c.startUpload(e, c.evictDevice(v))
		}
	}
	return nil, nil
}

// retryIfDue turns a failed entry whose backoff has passed back into one on disk.
func (c *Cache) retryIfDue(e *entry) {
	if e.state == StateFailed && time.Since(e.failedAt) >= c.opt.RetryAfter {
		e.state, e.err = StateDisk, nil
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

// Close drops every adapter that no lease holds and waits for loads in progress to end. Leased
// device copies are freed when released. Later calls fail with ErrClosed.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.unlock()
		return nil
	}
	c.closed = true
	for _, e := range c.entries {
		c.drop(e)
	}
	c.changed()
	c.unlock()
	c.wg.Wait()
	return nil
}

// Lease keeps one adapter's device copy resident. Release it when the request is done with it
// (after the last forward pass that reads it has completed).
type Lease struct {
	c        *Cache
	e        *entry
	released atomic.Bool
}

// Adapter is the device copy, valid until Release.
func (l *Lease) Adapter() *model.Adapter { return l.e.dev }

// Name is the adapter's name.
func (l *Lease) Name() string { return l.e.name }

// Release gives the lease back; releasing twice is a no-op.
func (l *Lease) Release() {
	if l.released.Swap(true) {
		return
	}
	c, e := l.c, l.e
	c.mu.Lock()
	defer c.unlock()
	e.refs--
	c.leases--
	e.lastUsed = time.Now()
	if e.refs > 0 {
		return
	}
	if e.removed || c.closed {
		c.freeDevice(e)
	} else {
		c.devIdle.Add(e, struct{}{})
	}
	c.changed()
}
