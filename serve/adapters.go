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
// device now, so that errors come back to the caller. Errors are KindInvalid for a bad name,
// KindNotFound for a missing path, KindUnprocessable for an adapter that does not fit the model
// or uses unsupported options (the name is then not listed).
func (e *Engine) LoadAdapter(name, path string) (err error) {
	if name == e.opt.ModelName || !adaptercache.ValidName(name) {
		return errorf(KindInvalid, "lora_name", "adapter name %q is empty, not a single path element, or the base model's", name)
	}
	if e.lookupRouter(name) {
		return errorf(KindInvalid, "lora_name", "the name %q is a router's", name)
	}
	start := time.Now()
	defer func() {
		if o, ok := e.obs().(AdapterLoadObserver); ok {
			o.AdapterLoaded(name, time.Since(start), err)
		}
	}()
	if err := e.cache.Register(name, path); err != nil {
		return &Error{Kind: KindUnavailable, Msg: fmt.Sprintf("adapter %q", name), Err: err}
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.opt.LoadTimeout)
	defer cancel()
	l, err := e.cache.Acquire(ctx, name)
	if err != nil {
		e.cache.Unregister(name)
		return adapterError(name, err)
	}
	bytes := l.Adapter().Bytes
	l.Release()
	e.log.Info("adapter loaded", "name", name, "path", path, "bytes", bytes, "seconds", time.Since(start).Seconds())
	return nil
}

// UnloadAdapter removes an adapter from the listing; running requests finish with it.
func (e *Engine) UnloadAdapter(name string) error {
	if !e.cache.Unregister(name) {
		return errorf(KindNotFound, "lora_name", "the adapter `%s` is not loaded", name)
	}
	return nil
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
