package adaptercache

import (
	"sort"
	"time"

	"github.com/loraplex/loraplex/model"
)

// State is where an adapter is.
type State int

const (
	StateDisk      State = iota // registered, in neither tier
	StateLoading                // being read from disk into host memory
	StateHost                   // in host memory
	StateUploading              // being copied from host memory to a device slot
	StateDevice                 // in a device slot (possibly also in host memory)
	StateFailed                 // the last load failed; Info.Err says why
)

var stateNames = [...]string{"disk", "loading", "host", "uploading", "device", "failed"}

func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// Info describes one registered adapter.
type Info struct {
	Name, Path string
	State      State
	InHost     bool  // has a host copy (also true for most device-resident adapters)
	Bytes      int64 // tensor bytes, 0 until first loaded
	Rank       int   // the largest rank of its modules (PEFT r, or rank_pattern's largest), 0 until first loaded
	Leases     int   // requests using the device copy now
	Waiting    int   // open tickets (queued requests and Acquire calls) for it
	LastUsed   time.Time
	Err        error // why the last load failed (StateFailed)
}

func (e *entry) info() Info {
	return Info{Name: e.name, Path: e.path, State: e.state, InHost: e.host != nil, Bytes: e.bytes, Rank: e.rank,
		Leases: e.refs, Waiting: e.waiting, LastUsed: e.lastUsed, Err: e.err}
}

// State describes the adapter registered as name.
func (c *Cache) State(name string) (Info, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[name]
	if e == nil {
		return Info{}, false
	}
	return e.info(), true
}

// List describes every registered adapter, by name.
func (c *Cache) List() []Info {
	c.mu.Lock()
	out := make([]Info, 0, len(c.entries))
	for _, e := range c.entries {
		out = append(out, e.info())
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// adapterRank is the largest rank among h's modules.
func adapterRank(h *model.HostAdapter) int {
	r := 0
	for _, layer := range h.Modules {
		for _, m := range layer {
			if m != nil {
				r = max(r, m.Rank)
			}
		}
	}
	return r
}

// SetLoadObserver installs f (nil: none) to be called after every disk -> host load, with the
// adapter's name, how long reading and checking it took, and the load's error. It runs on the
// loading goroutine with the cache's lock held, before anyone waiting for the load is woken (so
// a request or Acquire that sees the adapter loaded also sees the load observed): it must be
// quick, like a Prometheus observation, and must not call into the cache.
func (c *Cache) SetLoadObserver(f func(name string, d time.Duration, err error)) {
	c.mu.Lock()
	c.onLoad = f
	c.mu.Unlock()
}

// Stats are cumulative counters and current tier sizes, for metrics.
type Stats struct {
	// Where requests (Acquire, TryAcquire) found their adapter.
	DeviceHits, HostHits, Misses uint64
	// Evictions to make room (not unregistering or closing).
	DeviceEvictions, HostEvictions uint64
	// Disk -> host loads and host -> device uploads, and the time they took.
	Loads, LoadFailures, Uploads, UploadFailures uint64
	LoadSeconds, UploadSeconds                   float64
	// DigestSeconds is the time spent hashing what was loaded (Digest), once per load on its
	// first upload, beside the copy to the device: within UploadSeconds, not LoadSeconds.
	DigestSeconds float64

	HostAdapters   int
	HostBytes      int64
	DeviceSlots    int // slots taken: resident copies, uploads in progress, frees pending
	DeviceBytes    int64
	LeasedAdapters int // listed adapters with at least one lease
	Leases         int // leases not yet released, including on unregistered adapters
}

// Stats returns the counters and tier sizes.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.HostAdapters, s.HostBytes = c.hostN, c.hostB
	s.DeviceSlots, s.DeviceBytes = c.devUsed, c.devBytes
	s.Leases = c.leases
	for _, e := range c.entries {
		if e.refs > 0 {
			s.LeasedAdapters++
		}
	}
	return s
}
