package metrics

import (
	"time"

	"github.com/loraplex/loraplex/serve"
)

// observer receives the engine's events on the scheduler goroutine. Every method is a handful
// of atomic adds: histogram and counter observations in client_golang are lock-free, and the
// per-adapter series are found without allocating (see adapterCache), so a step pays nothing
// measurable for metrics (BenchmarkObserver: 0 allocs/op).
type observer struct{ m *Metrics }

var _ serve.Observer = (*observer)(nil)

// FirstToken feeds vllm:time_to_first_token_seconds. vLLM labels it with the served (base)
// model only, whichever adapter the request used, so the model argument is not a label here.
func (o *observer) FirstToken(_ string, ttft time.Duration) { o.m.ttft.Observe(ttft.Seconds()) }

// NextToken feeds vllm:inter_token_latency_seconds.
func (o *observer) NextToken(_ string, itl time.Duration) { o.m.itl.Observe(itl.Seconds()) }

// Finished feeds the request-level histograms and the per-adapter counters. vLLM observes e2e
// and queue time for every finished request, aborted ones included; so do we.
func (o *observer) Finished(r serve.FinishedRequest) {
	m := o.m
	m.e2e.Observe(r.E2E.Seconds())
	m.queue.Observe(r.Queue.Seconds())
	s := m.adapters.get(r.Model)
	s.requests[reasonIndex(r.Reason)].Inc()
	// The engine counts a prompt into vllm:prompt_tokens_total when its first token is sampled
	// (so a request aborted while waiting adds nothing); counting it here under the same
	// condition keeps the per-adapter totals summing to the vLLM totals.
	if r.CompletionTokens > 0 {
		s.prompt.Add(float64(r.PromptTokens))
		s.generation.Add(float64(r.CompletionTokens))
	}
	s.touched.Store(true)
}

// Step feeds the batch-shape and step-time histograms.
func (o *observer) Step(rows, seqs int, d time.Duration) {
	m := o.m
	m.rows.Observe(float64(rows))
	m.seqs.Observe(float64(seqs))
	m.stepSeconds.Observe(d.Seconds())
}

// AdapterLoaded feeds loraplex_adapter_load_seconds and loraplex_adapter_loads_total.
func (o *observer) AdapterLoaded(_ string, d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	o.m.loadSeconds.Observe(d.Seconds())
	o.m.loads.WithLabelValues(result).Inc()
}

// diskLoad feeds vllm:lora_adapter_load_seconds from the adapter cache's loading goroutines:
// every load from disk into host memory, including those a request for an evicted or not yet
// loaded adapter starts. Failed loads are counted by the cache's transfer counters instead.
func (o *observer) diskLoad(_ string, d time.Duration, err error) {
	if err == nil {
		o.m.diskLoadSeconds.Observe(d.Seconds())
	}
}
