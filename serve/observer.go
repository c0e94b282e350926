package serve

import (
	"slices"
	"time"
)

// Observer receives the engine's timing events, from the scheduler goroutine: implementations
// must be cheap and must not block (a Prometheus histogram observation is).
type Observer interface {
	// FirstToken: time from arrival to the first generated token.
	FirstToken(model string, ttft time.Duration)
	// NextToken: time between two generated tokens of one request.
	NextToken(model string, itl time.Duration)
	// Finished: a request ended (reason "stop", "length", "abort" or "error").
	Finished(r FinishedRequest)
	// Step: one forward pass over rows token rows from seqs sequences.
	Step(rows, seqs int, d time.Duration)
}

// AdapterLoadObserver is an optional extension of Observer: adapter loads (startup, runtime API
// and on-demand from adapter dirs), with how long reading, checking and uploading took. It is
// called from the loading goroutine, not the scheduler.
type AdapterLoadObserver interface {
	AdapterLoaded(name string, d time.Duration, err error)
}

// PrefixCacheObserver is an optional extension of Observer: each request's prefix-cache lookup
// at its first admission, in prompt tokens (queried) and tokens found cached (hit). Called from
// the scheduler goroutine.
type PrefixCacheObserver interface {
	PrefixCacheLookup(model string, queried, hit int)
}

// FinishedRequest summarises one request for metrics.
type FinishedRequest struct {
	Model            string // the base model's or the adapter's name
	Reason           string
	PromptTokens     int
	CompletionTokens int
	CachedTokens     int           // prompt tokens reused from the prefix cache
	Queue            time.Duration // arrival to first scheduling
	E2E              time.Duration // arrival to finish
}

// LoRAInfo is the adapter activity vLLM's vllm:lora_requests_info gauge reports. Unlike vLLM,
// which fills both sets with every adapter that has a request in flight (llm-d-router #2605),
// the sets are distinct views of the scheduler's two lists: an adapter whose requests all wait
// (for its load, a batch place or KV pages) is only in Waiting, and one with a request in the
// batch is in Running (and also in Waiting if another of its requests waits). A request naming
// a router counts as its expert adapters, the adapters it leases: the router itself takes no
// device slot.
type LoRAInfo struct {
	MaxLoRAs int      // device slots (--max-loras)
	Running  []string // adapters of running requests, sorted, unique
	Waiting  []string // adapters of waiting requests, sorted, unique
	At       time.Time
}

// SetObserver installs o (nil: none). Call before serving requests.
func (e *Engine) SetObserver(o Observer) { e.observer.Store(&o) }

func (e *Engine) obs() Observer {
	if p := e.observer.Load(); p != nil {
		return *p
	}
	return nil
}

// LoRAInfo returns the latest adapter activity snapshot.
func (e *Engine) LoRAInfo() LoRAInfo {
	if p := e.loraInfo.Load(); p != nil {
		return *p
	}
	return LoRAInfo{MaxLoRAs: e.opt.MaxLoRAs}
}

// publishLoRAInfo refreshes the snapshot when the sets of running or waiting adapters changed.
func (e *Engine) publishLoRAInfo() {
	running := adapterNames(e.running, e.namesA[:0])
	waiting := adapterNames(e.waiting, e.namesB[:0])
	e.namesA, e.namesB = running, waiting
	if old := e.loraInfo.Load(); old != nil && slices.Equal(old.Running, running) && slices.Equal(old.Waiting, waiting) {
		return
	}
	e.loraInfo.Store(&LoRAInfo{MaxLoRAs: e.opt.MaxLoRAs, Running: slices.Clone(running), Waiting: slices.Clone(waiting), At: time.Now()})
}

func adapterNames(seqs []*sequence, dst []string) []string {
	for _, sq := range seqs {
		switch {
		case sq.route != nil:
			dst = append(dst, sq.route.entry.bundle.Experts()...)
		case sq.adapterName != "":
			dst = append(dst, sq.adapterName)
		}
	}
	slices.Sort(dst)
	return slices.Compact(dst)
}

// modelName is how metrics label a sequence.
func (e *Engine) modelName(sq *sequence) string {
	if sq.adapterName != "" {
		return sq.adapterName
	}
	return e.opt.ModelName
}
