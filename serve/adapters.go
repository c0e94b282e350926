package serve

import (
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loraplex/loraplex/model"
)

// residentAdapter is an adapter on the backend with a reference count: every running or queued
// request holds one reference, and the registry holds one while the adapter is listed. The
// weights are freed when the last reference goes, so unloading or replacing an adapter never
// pulls weights out from under a request that started with them.
type residentAdapter struct {
	name    string
	path    string
	created int64
	w       *model.Adapter
	closer  io.Closer
	refs    atomic.Int64
	free    func(*model.Adapter)
}

func (a *residentAdapter) acquire() { a.refs.Add(1) }

func (a *residentAdapter) release() {
	if a.refs.Add(-1) == 0 {
		a.free(a.w)
		if a.closer != nil {
			a.closer.Close()
		}
	}
}

// registry maps adapter names to resident adapters.
type registry struct {
	mu sync.Mutex
	m  map[string]*residentAdapter
}

func (r *registry) get(name string) *residentAdapter {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.m[name]
	if a != nil {
		a.acquire()
	}
	return a
}

// put lists a (taking the registry's reference) and returns the adapter it replaced, if any.
func (r *registry) put(a *residentAdapter) {
	a.created = time.Now().Unix()
	a.acquire()
	r.mu.Lock()
	old := r.m[a.name]
	r.m[a.name] = a
	r.mu.Unlock()
	if old != nil {
		old.release()
	}
}

func (r *registry) remove(name string) bool {
	r.mu.Lock()
	a := r.m[name]
	delete(r.m, name)
	r.mu.Unlock()
	if a != nil {
		a.release()
	}
	return a != nil
}

func (r *registry) list() []*residentAdapter {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*residentAdapter, 0, len(r.m))
	for _, a := range r.m {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}
