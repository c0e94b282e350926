package serve

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/loraplex/loraplex/adaptercache"
)

// Adapters live in an adaptercache.Cache: disk -> host memory -> device slots, with leases that
// keep a copy on the device while any running request uses it. A request for an adapter opens
// a ticket and waits in the queue while the adapter loads (other requests keep running); the
// scheduler admits it once the ticket turns into a lease, and releases the lease when the
// request ends. Unloading or replacing an adapter never disturbs requests already using it.

// LoadAdapter lists path (a PEFT folder or a lorapack file) under name and loads it onto the
// device now, so that errors come back to the caller. Errors are KindInvalid for a bad name or
// one already served (vLLM's rule: ReplaceAdapter replaces an adapter), KindConflict while
// another load of the name is in progress, KindNotFound for a missing path, KindUnprocessable
// for an adapter that does not fit the model or uses unsupported options (the name is then not
// listed).
func (e *Engine) LoadAdapter(name, path string) error { return e.loadAdapter(name, path, false) }

// ReplaceAdapter is LoadAdapter that may replace the adapter served under name (vLLM's
// load_inplace). Requests already holding the old adapter keep its weights until they finish
// (their cache leases pin them); requests that come later get the new one. If the new adapter
// fails to load, the name goes back to the old path (reloaded from disk on next use); requests
// queued for the name meanwhile fail with the load's error.
func (e *Engine) ReplaceAdapter(name, path string) error { return e.loadAdapter(name, path, true) }

func (e *Engine) loadAdapter(name, path string, replace bool) (err error) {
	res, rerr := e.names.reserve(name, nameAdapter, path, replace)
	if rerr != nil {
		rerr.(*Error).Param = "lora_name"
		return rerr
	}
	start := time.Now()
	defer func() {
		if o, ok := e.obs().(AdapterLoadObserver); ok {
			o.AdapterLoaded(name, time.Since(start), err)
		}
	}()
	var prev string
	if info, ok := e.cache.State(name); ok && !res.fresh {
		prev = info.Path
	}
	if err := e.cache.Register(name, path); err != nil {
		e.names.abort(res)
		return &Error{Kind: KindUnavailable, Msg: fmt.Sprintf("adapter %q", name), Err: err}
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.opt.LoadTimeout)
	defer cancel()
	l, err := e.cache.Acquire(ctx, name)
	if err != nil {
		if prev != "" {
			e.cache.Register(name, prev)
		} else {
			e.cache.Unregister(name)
		}
		e.names.abort(res)
		return adapterError(name, err)
	}
	e.names.commitAdapter(res)
	bytes := l.Adapter().Bytes
	l.Release()
	e.log.Info("adapter loaded", "name", name, "path", path, "bytes", bytes, "seconds", time.Since(start).Seconds(), "replaced", prev != "")
	return nil
}

// UnloadAdapter removes an adapter from the listing; running requests finish with it. An
// adapter that a loaded router uses as an expert is not unloaded (KindConflict, naming the
// router): the router would fail every request.
func (e *Engine) UnloadAdapter(name string) error {
	return e.names.unlistAdapter(name, func() bool { return e.cache.Unregister(name) })
}

// adapterError maps a cache or loader error to the engine's kinds.
func adapterError(name string, err error) error {
	switch {
	case errors.Is(err, adaptercache.ErrUnknownAdapter):
		return errorf(KindNotFound, "model", "the model `%s` does not exist", name)
	case errors.Is(err, adaptercache.ErrClosed):
		return &Error{Kind: KindUnavailable, Msg: "the server is shutting down", Err: err}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return &Error{Kind: KindDeadline, Msg: fmt.Sprintf("adapter %q did not load in time", name), Err: err}
	}
	if ferr := fileError("lora_path", fmt.Sprintf("adapter %q", name), err); ferr != nil {
		return ferr
	}
	return &Error{Kind: KindUnprocessable, Param: "lora_path", Msg: fmt.Sprintf("adapter %q cannot be loaded", name), Err: err}
}

// AdapterCache exposes the cache's listing and counters (metrics, gRPC ListAdapters).
func (e *Engine) AdapterCache() *adaptercache.Cache { return e.cache }
