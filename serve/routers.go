package serve

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/router"
)

// Routers (learned mixtures of LoRA experts, router/) are served under their own names. A request
// naming a router opens a ticket for every expert adapter: the experts are ordinary adapters of
// the cache, loaded, shared with direct use and evicted like any other. The request waits in
// the queue until all of them are on the device, then runs with a model.Routing built over its
// leases, so unloading or replacing an expert never disturbs it.

// routerEntry is one loaded router bundle with its gates on the device.
type routerEntry struct {
	name    string
	dir     string
	bundle  *router.Bundle
	digest  [32]byte // bundle.Digest(), for the prefix cache
	created int64
	refs    int  // sequences holding it (under nameRegistry.mu)
	gone    bool // unlisted: the last sequence to let go frees the gates
	// selections counts, per layer and expert, the top-1 choice of every generated token
	// ([layer*experts+expert]); metrics read it at scrape time.
	selections []atomic.Int64
}

// routerSeq is a sequence's hold on a router: its expert tickets until they lease, then leases.
type routerSeq struct {
	entry   *routerEntry
	tickets []*adaptercache.Ticket // indexed like bundle.Experts(); nil once leased
	leases  []*adaptercache.Lease
	trace   bool // the request asked for the experts of each generated token
}

// RouterInfo describes a loaded router.
type RouterInfo struct {
	Name    string
	Dir     string
	Experts []string
	Layers  int
	Created int64
	// Selections[l][j] counts generated tokens whose top-1 expert in layer l was Experts[j].
	Selections [][]int64
}

// LoadRouter loads the bundle in dir under name, checks that every expert adapter loads, and
// puts the gates on the device. Errors: KindInvalid for a bad name or one already served (the
// base model's, an adapter's, an adapter directory's, or a loaded router's: ReplaceRouter
// replaces one), KindConflict while another load of the name is in progress, KindNotFound for
// a missing folder or expert, KindUnprocessable for an invalid bundle, too many experts for the
// device slots, or an expert that does not load.
func (e *Engine) LoadRouter(name, dir string) error { return e.loadRouter(name, dir, false) }

// ReplaceRouter is LoadRouter that may replace a loaded router of that name (vLLM's
// load_inplace): requests already running finish with the old one, later ones get the new one,
// and if the new one fails to load the old one stays.
func (e *Engine) ReplaceRouter(name, dir string) error { return e.loadRouter(name, dir, true) }

func (e *Engine) loadRouter(name, dir string, replace bool) error {
	res, err := e.names.reserve(name, nameRouter, dir, replace)
	if err != nil {
		err.(*Error).Param = "router"
		return err
	}
	committed := false
	defer func() {
		if !committed {
			e.names.abort(res)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), e.opt.LoadTimeout)
	defer cancel()
	b, err := e.readRouter(ctx, dir)
	if err != nil {
		if ferr := fileError("router", fmt.Sprintf("router %q", name), err); ferr != nil {
			return ferr
		}
		if KindOf(err) != KindInternal {
			return err
		}
		return &Error{Kind: KindUnprocessable, Param: "router", Msg: fmt.Sprintf("router %q", name), Err: err}
	}
	if n := len(b.Experts()); n > e.opt.MaxLoRAs {
		return errorf(KindUnprocessable, "router", "router %q has %d experts but only %d adapters fit on the device (--max-loras)", name, n, e.opt.MaxLoRAs)
	}
	// Every expert must be an adapter's name and load now, so a broken bundle fails here
	// rather than on requests.
	for _, x := range b.Experts() {
		if err := e.names.expert(x); err != nil {
			return &Error{Kind: err.Kind, Param: "router", Msg: fmt.Sprintf("router %q", name), Err: err}
		}
		l, err := e.cache.Acquire(ctx, x)
		if err != nil {
			return &Error{Kind: KindOf(adapterError(x, err)), Param: "router",
				Msg: fmt.Sprintf("router %q: expert adapter %q", name, x), Err: err}
		}
		l.Release()
	}
	if err := b.Upload(e.backend); err != nil {
		return &Error{Kind: KindInternal, Msg: fmt.Sprintf("router %q: uploading gates", name), Err: err}
	}
	ent := &routerEntry{name: name, dir: dir, bundle: b, digest: b.Digest(), created: time.Now().Unix(),
		selections: make([]atomic.Int64, b.NumLayers()*len(b.Experts()))}
	old, err := e.names.commitRouter(res, ent)
	committed = true // commitRouter gives the name back itself when it fails
	if err != nil {
		ent.gone = true
		b.Free(e.backend)
		err.(*Error).Param = "router"
		return err
	}
	if old != nil {
		e.retireRouter(old)
	}
	e.log.Info("router loaded", "name", name, "dir", dir, "experts", len(b.Experts()), "replaced", old != nil)
	return nil
}

// readRouter reads the bundle in dir beneath the roots until ctx ends or the engine closes; a
// read stuck on the file system is abandoned on its own goroutine (a bundle holds no device
// memory before Upload, so nothing leaks but the goroutine while it is stuck).
func (e *Engine) readRouter(ctx context.Context, dir string) (*router.Bundle, error) {
	type result struct {
		b   *router.Bundle
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := router.LoadIn(e.roots, dir, e.cfg)
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		return r.b, r.err
	case <-ctx.Done():
		return nil, &Error{Kind: KindDeadline, Param: "router", Msg: fmt.Sprintf("router bundle %q did not load within %v", dir, e.opt.LoadTimeout), Err: ctx.Err()}
	case <-e.stop:
		return nil, &Error{Kind: KindUnavailable, Msg: "the server is shutting down"}
	}
}

// UnloadRouter removes a router from the listing; running requests finish with it.
func (e *Engine) UnloadRouter(name string) error {
	ent, err := e.names.unlistRouter(name)
	if err != nil {
		return err
	}
	e.retireRouter(ent)
	return nil
}

// retireRouter frees an unlisted router's gates now, or when the last sequence using it ends.
func (e *Engine) retireRouter(ent *routerEntry) {
	e.names.mu.Lock()
	ent.gone = true
	free := ent.refs == 0
	e.names.mu.Unlock()
	if free {
		ent.bundle.Free(e.backend)
	}
}

// dropRouter gives back a reference taken by nameRegistry.resolve.
func (e *Engine) dropRouter(ent *routerEntry) {
	e.names.mu.Lock()
	ent.refs--
	free := ent.gone && ent.refs == 0
	e.names.mu.Unlock()
	if free {
		ent.bundle.Free(e.backend)
	}
}

// endRoute releases everything a routed sequence holds. Called from the loop (finish) or from
// Generate before the sequence was queued.
func (e *Engine) endRoute(rs *routerSeq, ad *model.Adapter) {
	if ad != nil && ad.Routing != nil {
		e.runner.ReleaseRouting(ad.Routing)
	}
	rs.release()
	e.dropRouter(rs.entry)
}

// Routers lists the loaded routers with their selection counts, sorted by name.
func (e *Engine) Routers() []RouterInfo {
	ents := e.names.routers()
	out := make([]RouterInfo, len(ents))
	for i, r := range ents {
		ex := r.bundle.Experts()
		sel := make([][]int64, r.bundle.NumLayers())
		for l := range sel {
			sel[l] = make([]int64, len(ex))
			for j := range ex {
				sel[l][j] = r.selections[l*len(ex)+j].Load()
			}
		}
		out[i] = RouterInfo{Name: r.name, Dir: r.dir, Experts: slices.Clone(ex), Layers: r.bundle.NumLayers(), Created: r.created, Selections: sel}
	}
	return out
}

// openRouter starts a request's hold on a router: a ticket per expert. Called from Generate.
func (e *Engine) openRouter(ent *routerEntry, trace bool) (*routerSeq, error) {
	rs := &routerSeq{entry: ent, trace: trace}
	for _, x := range ent.bundle.Experts() {
		t, err := e.cache.Want(x)
		if err != nil {
			rs.release()
			return nil, &Error{Kind: KindOf(adapterError(x, err)), Msg: fmt.Sprintf("router %q: expert adapter %q", ent.name, x), Err: err}
		}
		rs.tickets = append(rs.tickets, t)
	}
	rs.leases = make([]*adaptercache.Lease, len(rs.tickets))
	return rs, nil
}

// tryLease turns ready tickets into leases; it reports whether every expert is leased.
func (rs *routerSeq) tryLease() (bool, error) {
	ready := true
	for i, t := range rs.tickets {
		if t == nil {
			continue
		}
		l, err := t.TryLease()
		if err != nil {
			rs.tickets[i] = nil
			return false, fmt.Errorf("expert adapter %q: %w", rs.entry.bundle.Experts()[i], err)
		}
		if l == nil {
			ready = false
			continue
		}
		rs.tickets[i], rs.leases[i] = nil, l
	}
	return ready, nil
}

// routing builds the forward pass's view of the router over the leased experts.
func (rs *routerSeq) routing(cfg *model.Config) (*model.Adapter, error) {
	experts := make([]*model.Adapter, len(rs.leases))
	for i, l := range rs.leases {
		experts[i] = l.Adapter()
	}
	rt, err := rs.entry.bundle.Routing(rs.entry.name, cfg, experts)
	if err != nil {
		return nil, err
	}
	return &model.Adapter{Name: rs.entry.name, Routing: rt, Digest: routedDigest(rs.entry.digest, experts)}, nil
}

// routedDigest identifies what computes a routed request's KV pages: the bundle's content and
// its experts' contents, in the bundle's order. Zero (never shared) when an expert's is unknown.
func routedDigest(bundle [32]byte, experts []*model.Adapter) [32]byte {
	buf := append([]byte("loraplex routed v1\x00"), bundle[:]...)
	for _, x := range experts {
		if x.Digest == ([32]byte{}) {
			return [32]byte{}
		}
		buf = append(buf, x.Digest[:]...)
	}
	return sha256.Sum256(buf)
}

// release gives back tickets and leases (not the entry reference).
func (rs *routerSeq) release() {
	for i, t := range rs.tickets {
		if t != nil {
			t.Cancel()
			rs.tickets[i] = nil
		}
	}
	for i, l := range rs.leases {
		if l != nil {
			l.Release()
			rs.leases[i] = nil
		}
	}
}

// countRoute adds a generated token's per-layer top-1 experts to the router's counters and, when
// the request asked for it, returns their names ("" where a layer chose none).
func (e *Engine) countRoute(rs *routerSeq, trace []int32) []string {
	ex := rs.entry.bundle.Experts()
	var names []string
	if rs.trace {
		names = make([]string, len(trace))
	}
	for l, id := range trace {
		if id < 0 || int(id) >= len(ex) {
			continue
		}
		rs.entry.selections[l*len(ex)+int(id)].Add(1)
		if names != nil {
			names[l] = ex[id]
		}
	}
	return names
}
