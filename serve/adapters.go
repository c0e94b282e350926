package serve

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loraplex/loraplex/adaptercache"
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

// LoadAdapter reads a PEFT adapter folder, checks it against the base model, puts it on the
// backend and lists it under name (replacing an adapter of that name: requests already running
// keep the old weights). Errors are KindInvalid for a bad name, KindUnprocessable for an adapter
// that does not fit the model or uses unsupported options, KindNotFound for a missing folder.
func (e *Engine) LoadAdapter(name, path string) (err error) {
	if name == "" || name == e.opt.ModelName {
		return errorf(KindInvalid, "lora_name", "adapter name %q is empty or the base model's", name)
	}
	start := time.Now()
	defer func() {
		if o, ok := e.obs().(AdapterLoadObserver); ok {
			o.AdapterLoaded(name, time.Since(start), err)
		}
	}()
	// A PEFT folder or a compressed lorapack file.
	host, closer, err := adaptercache.DefaultLoader(path, name, e.cfg)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return &Error{Kind: KindNotFound, Param: "lora_path", Msg: fmt.Sprintf("adapter %q", name), Err: err}
		}
		return &Error{Kind: KindUnprocessable, Param: "lora_path", Msg: fmt.Sprintf("adapter %q cannot be loaded", name), Err: err}
	}
	w, err := model.UploadAdapter(e.runner.B, e.cfg, host)
	if err != nil {
		closer.Close()
		return &Error{Kind: KindUnprocessable, Param: "lora_path", Msg: fmt.Sprintf("adapter %q cannot be loaded", name), Err: err}
	}
	b := e.runner.B
	e.adapters.put(&residentAdapter{name: name, path: path, w: w, closer: closer, free: func(a *model.Adapter) { a.Free(b) }})
	e.log.Info("adapter loaded", "name", name, "path", path, "bytes", host.Bytes, "max_rank", w.MaxRank, "seconds", time.Since(start).Seconds())
	return nil
}

// UnloadAdapter removes an adapter from the listing; running requests finish with it.
func (e *Engine) UnloadAdapter(name string) error {
	if !e.adapters.remove(name) {
		return errorf(KindNotFound, "lora_name", "the adapter `%s` is not loaded", name)
	}
	return nil
}
