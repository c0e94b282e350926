// Package serve is the engine: a request queue, a continuous-batching scheduler over a paged KV
// cache with automatic prefix caching (prefixcache.go, pages.go) and its KV events for llm-d
// (kvevents.go), sampling, the adapters and routers, and the one registry of served names
// (names.go). The HTTP and gRPC gateways call its API; errors leave it as *Error, whose Kind the
// gateways answer from one table (errors.go).
package serve

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/internal/confine"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/tokenizer"
)

// Options configure an Engine. Zero values get defaults in NewEngine.
type Options struct {
	ModelName        string // the base model's name in APIs
	MaxNumSeqs       int    // sequences in one batch (default DefaultMaxNumSeqs)
	MaxBatchedTokens int    // token rows in one step; long prompts are prefilled in chunks (default DefaultMaxBatchedTokens)
	// LongPrefillTokenThreshold (vLLM's long_prefill_token_threshold) makes a prefill with more
	// rows than this left a long one: while requests wait, it takes at most this many rows of a
	// step and the rest of the budget admits them, so a short request arriving during a long
	// prompt starts at the next step instead of after the whole prefill. What waiting requests
	// leave still goes to the long prefill, so alone it runs at the full budget; only one long
	// prefill is admitted at a time. Default MaxBatchedTokens/4; MaxBatchedTokens (or more)
	// gives a long prefill the whole budget, as before.
	LongPrefillTokenThreshold int
	MaxModelLen               int // prompt + output limit (default: the model's, ResolveMaxModelLen, which servers use to refuse longer)
	PageSize                  int // KV-cache tokens per page (default 16)
	// KVCacheTokens is the KV cache's capacity in tokens; when 0 it is KVCacheMemory over the
	// model's per-token footprint on the backend (model.Config.KVBytesPerToken), and with
	// neither MaxNumSeqs * MaxModelLen. It must hold one sequence of MaxModelLen
	// (ErrKVCacheTooSmall). NewEngine leaves the capacity it chose here (Options).
	KVCacheTokens int
	// KVCacheMemory is the KV cache's budget in bytes (the server's --kv-cache-memory, or what
	// --gpu-memory-utilization leaves), used up to 4M tokens (or MaxNumSeqs * MaxModelLen if
	// more); NewEngine leaves the bytes the capacity takes here.
	KVCacheMemory int64
	MaxQueued     int // waiting requests beyond which Generate answers KindOverloaded (default 1024)
	// MaxLoRAs is the number of adapters on the device at once (default 32); requests for other
	// adapters wait while one loads into a free or least recently used slot.
	MaxLoRAs int
	// MaxLoRARank refuses adapters with a module of higher rank at load (default
	// adaptercache.DefaultMaxRank, 256: the largest the CUDA kernels implement).
	MaxLoRARank int
	// MaxCPULoRAs and MaxCPULoRABytes bound the host-memory tier (0: no limit).
	MaxCPULoRAs     int
	MaxCPULoRABytes int64
	// AdapterDirs are searched for DIR/NAME when a request names an adapter that is not loaded.
	AdapterDirs []string
	// AdapterRoots are the folders (or single files) that every adapter and router file must
	// resolve inside (internal/confine), links followed only while they stay inside: files of
	// adapters found in AdapterDirs, loaded by LoadAdapter or LoadRouter, or named by the
	// runtime load API (CheckAdapterPath). The adapter dirs are always roots; a server adds its
	// command-line adapter and router paths. With no roots at all nothing is confined (trusted
	// embedding code and tests) and the runtime load API refuses every path.
	AdapterRoots []string
	// LoadTimeout bounds one adapter or router load: reading it from disk, and for LoadAdapter
	// and LoadRouter also getting it onto the device (default DefaultLoadTimeout).
	LoadTimeout time.Duration
	Logger      *slog.Logger

	// DisablePrefixCaching turns automatic prefix caching off: every prompt is computed in
	// full (prefixcache.go; on by default, as in vLLM).
	DisablePrefixCaching bool

	// KVEvents publishes the prefix cache's page stored / removed / cleared events as vLLM does
	// (kvevents.go; ParseKVEventsConfig); nil: off. It needs prefix caching.
	KVEvents *KVEventsConfig

	// Deterministic makes every request's tokens and logprobs independent of what it is
	// batched with (vLLM's batch-invariant mode): a seeded or greedy request gets bitwise the
	// same output alone or in any busy batch. It costs throughput on the GPU (model.
	// BatchInvariant); a backend that cannot promise it fails NewEngine.
	Deterministic bool
}

// maxMemoryKVTokens bounds a KV cache sized from memory (Options.KVCacheMemory): 4M tokens,
// more than any real model's KV fits in a GPU (an 8B Llama's would take 512 GiB).
const maxMemoryKVTokens = 1 << 22

// Defaults of Options.MaxNumSeqs, Options.MaxBatchedTokens and Options.MaxLoRAs.
const (
	DefaultMaxNumSeqs       = 16
	DefaultMaxBatchedTokens = 512
	DefaultMaxLoRAs         = 32
)

// DefaultLoadTimeout is Options.LoadTimeout's default: minutes for a large adapter on slow
// storage, and still a bound on a load stuck on a dead file system.
const DefaultLoadTimeout = 2 * time.Minute

// Engine serves one base model and its adapters.
type Engine struct {
	cfg    *model.Config
	runner *model.Runner
	// backend is the runner's, for what lives beside the model on the device (adapters, router
	// gates); the engine reaches backend capabilities only through the runner's methods.
	backend model.Backend
	tok     *tokenizer.Tokenizer // nil: token ids only
	opt     Options
	log     *slog.Logger
	eos     map[int]bool

	cache  *adaptercache.Cache
	roots  *confine.Roots // nil: nothing confined (no AdapterRoots, no AdapterDirs)
	names  *nameRegistry  // every served name: base, adapters, routers
	submit chan *sequence
	queued atomic.Int64
	// unfinished counts requests Generate accepted that finish has not ended yet. Drain waits
	// on it alone: queued and stats.Running change at different moments of a step (a request
	// leaves the queue before the step publishes it as running), so their sum can read 0 while
	// a request is in flight.
	unfinished atomic.Int64
	draining   atomic.Bool
	// admitMu orders Generate's hand-over against Drain and Close: Generate counts and sends a
	// request under the read lock, only while not draining; stopAdmitting sets draining under
	// the write lock. So every request sent is counted before Drain reads the count, and is in
	// the channel before the loop stops (abortAll finishes it): none is left unanswered.
	admitMu  sync.RWMutex
	closed   chan struct{} // closed when the loop has stopped
	stop     chan struct{}
	stopOnce sync.Once
	nextID   atomic.Uint64

	// Loop-owned state.
	pages   *pageAllocator
	running []*sequence
	waiting []*sequence
	step    model.Step
	stepAd  []*model.Adapter
	stepSeq []*sequence
	// The step's sampling rows and the backend's results (model.DeviceSampler), and the
	// banned ids of one row, reused every step.
	rows      []model.SampleRow
	sampleOut []model.SampleResult
	banBuf    []int
	// The step's scored rows (prompt logprobs): what each asks, its result, its sequence and
	// the prompt position it scores, reused every step; stepDone are the prompt-only
	// sequences whose prompt this step completes.
	scoreRows []model.ScoreRow
	scoreOut  []model.ScoreResult
	scoreSeq  []*sequence
	scorePos  []int
	scoreIdx  []int32
	scoreRoom int
	stepDone  []*sequence
	// The step's long prefills (Options.LongPrefillTokenThreshold) and the rows each holds;
	// their rows go last, when the waiting requests have had their share.
	longSeq  []*sequence
	longRows []int
	// The rows the scheduler chose for the step, a sequence and its row count each, in the
	// order it chose them; emitRows adds them to the step grouped by adapter.
	planned   []plannedRows
	groupNext []int       // emitRows: each planned entry's next of its group
	groupLast map[any]int // emitRows: each group's latest planned entry
	// constraints compiles structured-output grammars (constrained.go).
	constraints constraints
	keyBuf      []byte // a page key's hash input, reused
	created     int64
	kvLog       *kvEventLog  // nil: KV-cache events off
	kvPub       *kvPublisher // sends kvLog's batches

	stats    Stats
	observer atomic.Pointer[Observer]
	loraInfo atomic.Pointer[LoRAInfo]
	namesA   []string
	namesB   []string
}

// Stats are counters the metrics package reads.
type Stats struct {
	Running, Waiting     atomic.Int64
	KVPagesUsed, KVPages atomic.Int64
	PromptTokens         atomic.Int64
	GenerationTokens     atomic.Int64
	Preemptions          atomic.Int64
	Steps                atomic.Int64
	Panics               atomic.Int64 // steps that panicked (bugs); their requests failed
	Finished             sync.Map     // finish reason -> *atomic.Int64

	// PrefixCacheQueries and PrefixCacheHits count prompt tokens looked up in the prefix cache
	// and found there, once per request (vLLM's vllm:prefix_cache_queries/hits).
	PrefixCacheQueries, PrefixCacheHits atomic.Int64
	// PrefixCacheEvictions counts cached pages taken for other contents (least recently used).
	PrefixCacheEvictions atomic.Int64
	// KVEventsDropped counts KV-cache events dropped because the publisher's queue was full.
	KVEventsDropped atomic.Int64
}

// NewEngine builds the runner (workspaces and KV cache) and starts the scheduler loop.
func NewEngine(cfg *model.Config, b model.Backend, w *model.Weights, tok *tokenizer.Tokenizer, opt Options) (*Engine, error) {
	if opt.ModelName == "" {
		opt.ModelName = "base"
	}
	if opt.MaxNumSeqs <= 0 {
		opt.MaxNumSeqs = DefaultMaxNumSeqs
	}
	if opt.MaxBatchedTokens <= 0 {
		opt.MaxBatchedTokens = DefaultMaxBatchedTokens
	}
	if opt.MaxBatchedTokens < opt.MaxNumSeqs {
		return nil, fmt.Errorf("engine: max batched tokens %d below max sequences %d", opt.MaxBatchedTokens, opt.MaxNumSeqs)
	}
	if opt.LongPrefillTokenThreshold <= 0 {
		opt.LongPrefillTokenThreshold = max(1, opt.MaxBatchedTokens/4)
	}
	opt.LongPrefillTokenThreshold = min(opt.LongPrefillTokenThreshold, opt.MaxBatchedTokens)
	if opt.MaxModelLen <= 0 {
		opt.MaxModelLen, _ = ResolveMaxModelLen(cfg, 0)
	}
	if opt.PageSize <= 0 {
		opt.PageSize = 16
	}
	perToken := cfg.KVBytesPerToken(model.KVElementBytes(b))
	switch {
	case opt.KVCacheTokens > 0:
	case opt.KVCacheMemory > 0:
		// Whole pages only: a page is the unit the allocator hands out. A tiny model on a large
		// device would get hundreds of millions of tokens, whose page tables (host memory, about
		// 7 bytes a token with prefix caching) would outweigh the cache: no more than
		// maxMemoryKVTokens, or every sequence at full length if that is more.
		limit := max(maxMemoryKVTokens, int64(opt.MaxNumSeqs)*int64(opt.MaxModelLen))
		opt.KVCacheTokens = int(min(opt.KVCacheMemory/perToken, limit)) / opt.PageSize * opt.PageSize
	default:
		opt.KVCacheTokens = opt.MaxNumSeqs * opt.MaxModelLen
	}
	if opt.KVCacheTokens > math.MaxInt32-opt.PageSize {
		return nil, fmt.Errorf("engine: a KV cache of %d tokens is more than KV slot ids (int32) can address", opt.KVCacheTokens)
	}
	if opt.KVCacheTokens < opt.MaxModelLen {
		return nil, fmt.Errorf("engine: %w: it holds %d tokens (%d bytes at %d bytes per token), one sequence of max model length %d needs %d bytes",
			ErrKVCacheTooSmall, opt.KVCacheTokens, int64(opt.KVCacheTokens)*perToken, perToken, opt.MaxModelLen, int64(opt.MaxModelLen)*perToken)
	}
	if opt.MaxQueued <= 0 {
		opt.MaxQueued = 1024
	}
	opt.AdapterRoots = append(append([]string(nil), opt.AdapterRoots...), opt.AdapterDirs...)
	if opt.LoadTimeout <= 0 {
		opt.LoadTimeout = DefaultLoadTimeout
	}
	roots := confine.New(opt.AdapterRoots...)
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.MaxLoRAs <= 0 {
		opt.MaxLoRAs = DefaultMaxLoRAs
	}
	if opt.KVEvents != nil && opt.DisablePrefixCaching {
		return nil, fmt.Errorf("engine: KV-cache events need prefix caching (the events name the cache's pages)")
	}
	pages := (opt.KVCacheTokens + opt.PageSize - 1) / opt.PageSize
	opt.KVCacheMemory = int64(pages*opt.PageSize) * perToken
	ro := RunnerOptions(opt)
	ro.KV = model.KVSpec{Pages: pages, PageSize: opt.PageSize}
	r, err := model.NewRunner(cfg, b, w, ro)
	if err != nil {
		return nil, err
	}
	if opt.Deterministic {
		if err := r.SetBatchInvariant(true); err != nil {
			return nil, fmt.Errorf("engine: deterministic mode: %w", err)
		}
	}
	// Sampling is the backend's (one sampler for every backend: model.SampleReference).
	if !r.CanSample() {
		return nil, fmt.Errorf("engine: backend %s does not sample (model.DeviceSampler)", b.Name())
	}
	// Backends whose uploads alias host memory (the CPU computes from the host copy in place) need
	// the host copy kept while the device copy lives; copying backends (CUDA) do not.
	cache, err := adaptercache.New(adaptercache.Options{Config: cfg, Backend: b, Dirs: opt.AdapterDirs,
		MaxDeviceSlots: opt.MaxLoRAs, MaxHostAdapters: opt.MaxCPULoRAs, MaxHostBytes: opt.MaxCPULoRABytes,
		UploadCopies: !model.AliasesUploads(b), Roots: roots, LoadTimeout: opt.LoadTimeout, MaxRank: opt.MaxLoRARank})
	if err != nil {
		return nil, err
	}
	e := &Engine{
		cfg: cfg, runner: r, backend: b, tok: tok, opt: opt, log: opt.Logger, eos: map[int]bool{},
		cache:  cache,
		roots:  roots,
		names:  newNameRegistry(opt.ModelName, opt.AdapterDirs),
		submit: make(chan *sequence, opt.MaxQueued),
		closed: make(chan struct{}), stop: make(chan struct{}),
		pages:   newPageAllocator(pages, opt.PageSize, !opt.DisablePrefixCaching),
		created: time.Now().Unix(),
	}
	for _, id := range cfg.EOSTokenIDs {
		e.eos[id] = true
	}
	if tok != nil {
		for _, id := range tok.EOS() {
			e.eos[id] = true
		}
	}
	e.stats.KVPages.Store(int64(pages))
	if opt.KVEvents != nil {
		pub, err := newKVPublisher(opt.KVEvents, e.log.Error)
		if err != nil {
			cache.Close()
			return nil, err
		}
		e.kvPub = pub
		e.kvLog = &kvEventLog{hasher: newLLMDHasher(opt.KVEvents.HashSeed), model: opt.KVEvents.modelName(opt.ModelName),
			refs: map[uint64]int32{}, queue: pub.queue, dropped: func(n int) { e.stats.KVEventsDropped.Add(int64(n)) }}
		e.pages.publishEvents(e.kvLog)
	}
	go e.loop()
	return e, nil
}

// KVEventsAddr is the address the KV-cache events' socket listens on, or nil when events are
// off or the socket dials out.
func (e *Engine) KVEventsAddr() net.Addr {
	if e.kvPub == nil {
		return nil
	}
	return e.kvPub.sock.Addr()
}

// Config returns the base model's architecture.
func (e *Engine) Config() *model.Config { return e.cfg }

// Tokenizer returns the tokenizer, or nil when the engine serves token ids only.
func (e *Engine) Tokenizer() *tokenizer.Tokenizer { return e.tok }

// Options returns the effective options.
func (e *Engine) Options() Options { return e.opt }

// Stats exposes live counters.
func (e *Engine) Stats() *Stats { return &e.stats }

// Ready reports whether the engine accepts requests: not after Close or Drain, and not once the
// backend has failed for good (a sticky CUDA error), so health checks report NOT_SERVING.
func (e *Engine) Ready() bool {
	select {
	case <-e.closed:
		return false
	default:
	}
	if e.BackendErr() != nil {
		return false
	}
	return !e.draining.Load()
}

// BackendErr returns the backend's permanent failure, if it has one.
func (e *Engine) BackendErr() error {
	return e.runner.Err()
}

// backendFailed is the error for requests that the backend's permanent failure ends, or nil:
// Unavailable (the server cannot serve until it is restarted, as its health says), with the
// backend's reason.
func (e *Engine) backendFailed() *Error {
	if err := e.BackendErr(); err != nil {
		return &Error{Kind: KindUnavailable, Msg: "the model backend has failed", Err: err}
	}
	return nil
}

// Models lists the base model and every adapter.
func (e *Engine) Models() []ModelInfo {
	out := []ModelInfo{{ID: e.opt.ModelName, Kind: "base", Created: e.created, MaxLen: e.opt.MaxModelLen}}
	for _, a := range e.cache.List() {
		if a.State == adaptercache.StateFailed {
			continue
		}
		out = append(out, ModelInfo{ID: a.Name, Parent: e.opt.ModelName, Kind: "adapter", Created: e.created, MaxLen: e.opt.MaxModelLen})
	}
	for _, r := range e.Routers() {
		out = append(out, ModelInfo{ID: r.Name, Parent: e.opt.ModelName, Kind: "router", Created: r.Created, MaxLen: e.opt.MaxModelLen, Experts: r.Experts})
	}
	return out
}

// Serves says what a request naming model would run on: "base", "adapter" or "router", resolved
// through the name registry exactly as Generate resolves it (an adapter directory's adapter
// counts before its first load), or a KindNotFound error naming the model.
func (e *Engine) Serves(model string) (string, error) {
	kind, _, err := e.names.resolve(model, false)
	if err != nil {
		return "", err
	}
	if kind == nameNone {
		return "base", nil
	}
	return kind.String(), nil
}

// Generate validates req and queues it. Errors are *Error: KindNotFound for an unknown model,
// KindInvalid for bad parameters, KindOverloaded when the queue is full, KindUnavailable while
// draining. Cancelling ctx aborts the request and frees its KV pages at the next step.
func (e *Engine) Generate(ctx context.Context, req Request) (*Stream, error) {
	if !e.Ready() {
		if err := e.backendFailed(); err != nil {
			return nil, err
		}
		return nil, errorf(KindUnavailable, "", "the server is shutting down")
	}
	p := req.Params
	if err := e.validate(&req, &p); err != nil {
		return nil, err
	}
	grammar, err := e.grammar(&p)
	if err != nil {
		return nil, err
	}
	var ticket *adaptercache.Ticket
	var lease *adaptercache.Lease
	var route *routerSeq
	if req.Model == e.opt.ModelName {
		req.Model = ""
	}
	// The name registry says what the model names; the adapter cache then finds an adapter.
	kind, ent, err := e.names.resolve(req.Model, true)
	if err != nil {
		return nil, err
	}
	switch kind {
	case nameRouter:
		if route, err = e.openRouter(ent, req.TraceExperts); err != nil {
			e.dropRouter(ent)
			return nil, err
		}
	case nameAdapter:
		// The ticket starts loading the adapter now and the request waits for it in the queue.
		// When the adapter is already on the device the request leases it at once: it then keeps
		// these weights even if the adapter is unloaded or replaced before it runs.
		if ticket, err = e.cache.Want(req.Model); err != nil {
			return nil, adapterError(req.Model, err)
		}
		if lease, err = ticket.TryLease(); err != nil {
			return nil, adapterError(req.Model, err)
		}
		if lease != nil {
			ticket = nil
		}
	}
	release := func() {
		if ticket != nil {
			ticket.Cancel()
		}
		if lease != nil {
			lease.Release()
		}
		if route != nil {
			e.endRoute(route, nil)
		}
	}
	if e.queued.Add(1) > int64(e.opt.MaxQueued) {
		e.queued.Add(-1)
		release()
		return nil, errorf(KindOverloaded, "", "too many requests are waiting (%d); retry later", e.opt.MaxQueued)
	}
	sctx, cancel := context.WithCancel(ctx)
	sq := &sequence{
		id: e.nextID.Add(1), ctx: sctx, params: p, ticket: ticket, lease: lease, route: route, adapterName: req.Model,
		tokens: append(make([]int, 0, len(req.Prompt)+min(p.MaxTokens, 256)), req.Prompt...), promptLen: len(req.Prompt),
		sampler: newSampler(&p, req.Prompt), stream: newStream(cancel), arrival: time.Now(), matcher: grammar.NewMatcher(),
	}
	sq.sampler.p = &sq.params
	if lease != nil {
		sq.adapterW = lease.Adapter()
	}
	for _, s := range p.Stop {
		sq.maxStop = max(sq.maxStop, len(s))
	}
	if e.tok != nil {
		sq.dec = e.tok.NewStreamDecoder(p.SkipSpecialTokens)
	}
	e.admitMu.RLock()
	defer e.admitMu.RUnlock()
	if e.draining.Load() { // Drain or Close began while the request was being built
		e.queued.Add(-1)
		cancel()
		release()
		return nil, errorf(KindUnavailable, "", "the server is shutting down")
	}
	e.unfinished.Add(1)
	select {
	case e.submit <- sq:
	default: // cannot happen while queued <= MaxQueued, but never block a caller
		e.unfinished.Add(-1)
		e.queued.Add(-1)
		cancel()
		release()
		return nil, errorf(KindOverloaded, "", "too many requests are waiting; retry later")
	}
	return sq.stream, nil
}

func (e *Engine) validate(req *Request, p *SamplingParams) error {
	V := e.cfg.VocabSize
	if len(req.Prompt) == 0 {
		return errorf(KindInvalid, "prompt", "the prompt is empty")
	}
	for _, t := range req.Prompt {
		if t < 0 || t >= V {
			return errorf(KindInvalid, "prompt", "token id %d is out of vocabulary (0..%d)", t, V-1)
		}
	}
	L := e.opt.MaxModelLen
	if len(req.Prompt) >= L {
		return errorf(KindInvalid, "prompt", "this model's maximum context length is %d tokens, but the prompt has %d tokens", L, len(req.Prompt))
	}
	switch {
	case p.MaxTokens < 0:
		return errorf(KindInvalid, "max_tokens", "max_tokens must be at least 1, got %d", p.MaxTokens)
	case p.MaxTokens == 0:
		p.MaxTokens = L - len(req.Prompt)
	case len(req.Prompt)+p.MaxTokens > L:
		return errorf(KindInvalid, "max_tokens", "this model's maximum context length is %d tokens; you requested %d tokens (%d in the prompt, %d in the completion)", L, len(req.Prompt)+p.MaxTokens, len(req.Prompt), p.MaxTokens)
	}
	switch {
	case p.MinTokens < 0 || p.MinTokens > p.MaxTokens:
		return errorf(KindInvalid, "min_tokens", "min_tokens must be between 0 and max_tokens (%d), got %d", p.MaxTokens, p.MinTokens)
	case !(p.Temperature >= 0) || p.Temperature > 100:
		return errorf(KindInvalid, "temperature", "temperature must be between 0 and 100, got %v", p.Temperature)
	case !(p.TopP >= 0 && p.TopP <= 1):
		return errorf(KindInvalid, "top_p", "top_p must be in (0, 1] (0 means off), got %v", p.TopP)
	case p.TopK < -1:
		return errorf(KindInvalid, "top_k", "top_k must be -1 (off) or positive, got %d", p.TopK)
	case !(p.MinP >= 0 && p.MinP <= 1):
		return errorf(KindInvalid, "min_p", "min_p must be in [0, 1], got %v", p.MinP)
	case !(p.RepetitionPenalty >= 0) || p.RepetitionPenalty > 100:
		return errorf(KindInvalid, "repetition_penalty", "repetition_penalty must be positive (0 means off), got %v", p.RepetitionPenalty)
	case !(p.PresencePenalty >= -2 && p.PresencePenalty <= 2):
		return errorf(KindInvalid, "presence_penalty", "presence_penalty must be in [-2, 2], got %v", p.PresencePenalty)
	case !(p.FrequencyPenalty >= -2 && p.FrequencyPenalty <= 2):
		return errorf(KindInvalid, "frequency_penalty", "frequency_penalty must be in [-2, 2], got %v", p.FrequencyPenalty)
	case p.Logprobs < -1 || p.Logprobs > 20:
		return errorf(KindInvalid, "logprobs", "logprobs must be between 0 and 20, got %d", p.Logprobs)
	case p.PromptLogprobs < -1 || p.PromptLogprobs > 20:
		return errorf(KindInvalid, "prompt_logprobs", "prompt_logprobs must be between 0 and 20, got %d", p.PromptLogprobs)
	}
	if err := e.checkLogitBias(p.LogitBias); err != nil {
		return err
	}
	if err := checkStop(p.Stop); err != nil {
		return err
	}
	if len(p.StopTokenIDs) > MaxStopTokenIDs {
		return errorf(KindInvalid, "stop_token_ids", "at most %d stop_token_ids, got %d", MaxStopTokenIDs, len(p.StopTokenIDs))
	}
	for _, s := range p.Stop {
		if s == "" {
			return errorf(KindInvalid, "stop", "stop strings must not be empty")
		}
	}
	if len(p.Stop) > 0 && e.tok == nil {
		return errorf(KindInvalid, "stop", "stop strings need a tokenizer, and this model has none")
	}
	for _, t := range p.StopTokenIDs {
		if t < 0 || t >= V {
			return errorf(KindInvalid, "stop_token_ids", "stop token id %d is out of vocabulary", t)
		}
	}
	return nil
}

// checkLogitBias validates a logit_bias: at most MaxLogitBias entries, token ids inside the
// vocabulary, biases in [-100, 100], and a backend that applies them (model.LogitBiaser).
func (e *Engine) checkLogitBias(bias map[int]float64) error {
	if len(bias) == 0 {
		return nil
	}
	if len(bias) > MaxLogitBias {
		return errorf(KindInvalid, "logit_bias", "at most %d logit_bias entries, got %d", MaxLogitBias, len(bias))
	}
	if !e.runner.AppliesLogitBias() {
		return errorf(KindInvalid, "logit_bias", "logit_bias is not supported on the %s backend", e.backend.Name())
	}
	for t, b := range bias {
		if t < 0 || t >= e.cfg.VocabSize {
			return errorf(KindInvalid, "logit_bias", "logit_bias token id %d is out of vocabulary (0..%d)", t, e.cfg.VocabSize-1)
		}
		if !(b >= -100 && b <= 100) {
			return errorf(KindInvalid, "logit_bias", "logit_bias of token %d must be in [-100, 100], got %v", t, b)
		}
	}
	return nil
}

// Drain stops admitting requests, lets running and queued ones finish until ctx ends, then
// aborts what is left and stops the loop.
func (e *Engine) Drain(ctx context.Context) error {
	e.stopAdmitting()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for e.unfinished.Load() > 0 {
		select {
		case <-ctx.Done():
			e.Close()
			return ctx.Err()
		case <-tick.C:
		}
	}
	e.Close()
	return nil
}

// stopAdmitting makes Generate refuse new requests; once it returns, every request Generate
// accepted is counted in unfinished and already in the submit channel (admitMu).
func (e *Engine) stopAdmitting() {
	e.admitMu.Lock()
	e.draining.Store(true)
	e.admitMu.Unlock()
}

// Close aborts everything and stops the loop.
func (e *Engine) Close() {
	e.stopAdmitting()
	e.stopOnce.Do(func() { close(e.stop) })
	<-e.closed
	if e.kvPub != nil {
		e.kvPub.close()
	}
	e.cache.Close()
}
