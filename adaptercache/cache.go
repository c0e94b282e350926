package adaptercache

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/loraplex/loraplex/internal/confine"
	"github.com/loraplex/loraplex/model"
)

// Errors returned by the cache. Load failures are returned as the loader's error (an
// *AdapterError or an I/O error naming the adapter), unchanged, so errors.Is / errors.As work.
var (
	ErrUnknownAdapter = errors.New("adaptercache: unknown adapter")
	ErrClosed         = errors.New("adaptercache: cache closed")
)

// LoaderFunc reads one adapter from path into host memory, validated against cfg. The closer
// releases what the HostAdapter's tensors point into (the built-in loaders copy tensors into
// private memory, so theirs holds at most zero pages and, for LoadCompressedEncoded, the
// streams' buffer, which it gives to the next load: nothing of the adapter may be read after
// Close); nil means nothing to close.
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
	// Host copies that back a device copy (aliasing backends) or an upload in progress, or that
	// an open ticket wants, cannot be evicted, so the tier may exceed its budget by those. The
	// buffers closed device-decoded loads give back for the next (streambuf.go, at most
	// streamBufferRetain bytes) are process memory outside this budget.
	MaxHostAdapters int
	MaxHostBytes    int64
	// UploadCopies says the backend copies tensors on Upload (CUDA), so the host copy may be
	// dropped while the device copy lives. False (the CPU backend, which computes from the host
	// copy in place) keeps the host copy pinned as long as its device copy exists.
	UploadCopies bool
	// Loader defaults to LoaderIn(Roots, Backend as a model.EncodedUploader if it is one: CUDA
	// decodes q4 / q8 tensors on the device).
	Loader LoaderFunc
	// Roots confine every file the default loader opens, and the DIR/NAME lookups in Dirs
	// (nil: no confinement).
	Roots *confine.Roots
	// LoadTimeout bounds one read of an adapter from disk (0: no bound). A load that overruns
	// it fails with context.DeadlineExceeded; the loader's goroutine is abandoned and whatever
	// it returns later is closed.
	LoadTimeout time.Duration
	// MaxRank refuses, at load, adapters with a module of higher rank (--max-lora-rank; 0:
	// DefaultMaxRank, the kernels' limit).
	MaxRank int
	// RetryAfter is how long a failed adapter answers with its error before the next request
	// tries to load it again (default 30s); Register retries at once.
	RetryAfter time.Duration
}

// Cache is a registry of adapters by name and their copies in two tiers: host memory (a
// validated HostAdapter in private memory) and device slots (a
// model.Adapter uploaded through the Backend). A request opens a Ticket (Want) or calls Acquire
// and ends up with a Lease on a device copy; a leased copy is never evicted or freed, so the
// forward pass can read it until Release.
//
// All methods are safe for concurrent use. Loads and uploads run on their own goroutines and
// call only Backend.Upload and Backend.Free, so the engine's loop never waits on a load.
type Cache struct {
	opt    Options
	loader LoaderFunc

	mu      sync.Mutex
	entries map[string]*entry
	// wake is closed (and replaced) after every state change; waiters select on it.
	wake  chan struct{}
	dirty bool
	// hostLRU holds the entries that have a host copy, in recency order.
	hostLRU *simplelru.LRU[*entry, struct{}]
	// devIdle holds the entries whose device copy no lease references, in recency order: the
	// eviction candidates of the device tier.
	devIdle *simplelru.LRU[*entry, struct{}]
	// queue holds the open tickets in arrival order: device slots go to them first come, first
	// served.
	queue   *list.List
	claimed map[*entry]bool // kick's scratch: entries wanted by tickets already passed
	// devUsed counts device slots taken: resident copies (including those of unregistered
	// adapters still leased), uploads in progress and frees not yet done.
	devUsed  int
	devBytes int64
	hostN    int
	hostB    int64
	loading  int // loads in progress
	leases   int
	stats    Stats
	closed   bool
	// pending are actions (closing files, freeing device copies) collected under mu and run
	// after it is released, so no unmap or backend call happens while holding the lock.
	pending []func()
	wg      sync.WaitGroup
	// closing is closed by Close: loads still reading the disk are abandoned, so Close (and a
	// server's shutdown) never waits on a stuck file system.
	closing chan struct{}
	// onLoad, when set, hears of every disk -> host load (SetLoadObserver).
	onLoad func(name string, d time.Duration, err error)
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
	waiting    int       // open tickets: the entry is not evicted under them
	removed    bool
	err        error
	failedAt   time.Time
	lastUsed   time.Time
	bytes      int64 // adapter bytes once known
	rank       int   // the largest rank of its modules, once known
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
	c := &Cache{opt: opt, loader: opt.Loader, entries: map[string]*entry{}, wake: make(chan struct{}),
		queue: list.New(), claimed: map[*entry]bool{}, closing: make(chan struct{})}
	if c.opt.MaxRank <= 0 {
		c.opt.MaxRank = DefaultMaxRank
	}
	if c.loader == nil {
		u, _ := opt.Backend.(model.EncodedUploader)
		c.loader = LoaderIn(opt.Roots, u)
	}
	// The LRUs are used as recency lists only: their size is never reached, because eviction
	// must skip pinned and leased entries, which simplelru's own eviction cannot do.
	c.hostLRU, _ = simplelru.NewLRU[*entry, struct{}](math.MaxInt, nil)
	c.devIdle, _ = simplelru.NewLRU[*entry, struct{}](math.MaxInt, nil)
	return c, nil
}

// unlock releases mu and then runs the actions collected while holding it. If anything changed,
// it first lets queued tickets move (which may change more) and wakes every waiter once.
func (c *Cache) unlock() {
	if c.dirty {
		for c.dirty {
			c.dirty = false
			c.kick()
		}
		close(c.wake)
		c.wake = make(chan struct{})
	}
	p := c.pending
	c.pending = nil
	c.mu.Unlock()
	for _, f := range p {
		f()
	}
}

// changed records a state change, acted on by unlock. Called with mu held.
func (c *Cache) changed() { c.dirty = true }

// Changed returns a channel closed at the next state change of any adapter, for a scheduler
// that polls tickets (Ticket.TryLease) instead of blocking in Acquire.
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
	// An entry that is loading or uploading is cleaned up by its goroutine, which sees removed;
	// its tickets move to the name's next registration, if any, when next looked at.
}

// Prefetch starts reading name from disk into host memory if it is in neither tier, without
// waiting, so a later request finds it there. It is a hint: nothing happens when the host tier
// is full of adapters in use. It reports unknown names and closed caches only. (Queued
// requests need no Prefetch: a ticket loads its adapter.)
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
		if c.hostRoom(e) {
			c.startLoad(e)
		}
	case StateHost:
		c.hostLRU.Get(e) // asked for again: keep it
	}
	return nil
}

// Close drops every adapter that no lease holds and waits for uploads in progress to end; loads
// still reading the disk are abandoned (their results are closed when they return). Leased
// device copies are freed when released. Later calls fail with ErrClosed.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.unlock()
		return nil
	}
	c.closed = true
	close(c.closing)
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
