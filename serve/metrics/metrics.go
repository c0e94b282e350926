// Package metrics exports an engine's state and timings to Prometheus under the names vLLM v1
// uses (vllm:*), so routers that balance vLLM pods by queue length, KV-cache use and LoRA
// affinity work unchanged, plus loraplex_* metrics for what vLLM does not report.
//
// Two sources feed it. Gauges and counters that mirror engine state (running and waiting
// requests, KV pages, token and finish counters, the LoRA activity snapshot, resident adapters)
// are read at scrape time from the engine's atomics, so a scrape never waits on the scheduler
// loop and the loop never pays for a scrape. Latency histograms and per-adapter counters are fed
// by the engine's Observer hooks on the scheduler goroutine; those calls do not allocate.
//
// Adapter residency (vllm:lora_adapter_loaded and its counts, the names of vLLM's pending LoRA
// load-event metrics that llm-d-router's residency scorer reads) is read from the adapter cache's
// listing at scrape time; vllm:lora_adapter_load_seconds is fed by the cache's loading goroutines.
//
// Label cardinality: vllm:* series carry only the base model's name, except
// vllm:lora_adapter_loaded, one series per resident adapter (bounded by the host tier and the
// device slots; an evicted or unloaded adapter's series goes at once). The loraplex_adapter_*
// series carry one adapter label per loaded adapter (plus the base model), six series each;
// an unloaded adapter's series are dropped once a scrape finds it neither loaded, nor running
// or waiting, nor finishing a request since the previous scrape. So the number of series is
// bounded by the adapters loaded at a time, not by those ever loaded (a counter that comes back
// after a reload starts from zero, which Prometheus treats as a reset).
package metrics

import (
	"net/http"
	"time"

	"github.com/loraplex/loraplex/serve"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is the set of collectors for one engine.
type Metrics struct {
	e        *serve.Engine
	base     string
	created  time.Time
	gatherer prometheus.Gatherer

	// Fed by the Observer hooks.
	ttft, itl, e2e, queue   prometheus.Histogram
	rows, seqs, stepSeconds prometheus.Histogram
	adapters                adapterCache
	obs                     observer
	histograms              []prometheus.Histogram
	state                   *stateCollector
	adapterVecs             []*prometheus.CounterVec
	loadSeconds             prometheus.Histogram
	loads                   *prometheus.CounterVec
	diskLoadSeconds         prometheus.Histogram // vllm:lora_adapter_load_seconds
	prefix                  *prefixCacheCollector
}

// New registers the collectors on reg and installs itself as e's Observer (replacing any
// other). reg nil means a fresh registry. Handler serves reg when reg is also a Gatherer (a
// *prometheus.Registry, or prometheus.DefaultRegisterer); otherwise it serves these metrics only.
// It panics if reg already holds metrics with these names, like prometheus.MustRegister.
func New(e *serve.Engine, reg prometheus.Registerer) *Metrics {
	base := e.Options().ModelName
	m := &Metrics{e: e, base: base, created: time.Now()}
	vllm := prometheus.Labels{labelModel: base, labelEngine: engineIndex}
	own := prometheus.Labels{labelModel: base}
	hist := func(name, help string, buckets []float64, l prometheus.Labels) prometheus.Histogram {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets, ConstLabels: l})
		m.histograms = append(m.histograms, h)
		return h
	}
	m.ttft = hist(nameTTFT, "Histogram of time to first token in seconds.", bucketsTTFT, vllm)
	m.itl = hist(nameITL, "Histogram of inter-token latency in seconds.", bucketsITL, vllm)
	m.e2e = hist(nameE2E, "Histogram of e2e request latency in seconds.", bucketsRequest, vllm)
	m.queue = hist(nameQueue, "Histogram of time spent in WAITING phase for request.", bucketsRequest, vllm)
	m.rows = hist(nameBatchRows, "Token rows (prefill chunk tokens plus decode tokens) in one engine step.", bucketsRows, own)
	m.seqs = hist(nameBatchSeqs, "Sequences in one engine step.", bucketsSeqs(e.Options().MaxNumSeqs), own)
	m.stepSeconds = hist(nameStepSeconds, "Duration of one forward pass in seconds.", bucketsStep, own)
	m.diskLoadSeconds = hist(nameLoRALoadSeconds, "Seconds to load a LoRA adapter from disk into host memory (read and check against the model), on demand or by the load API; one observation per successful load.", bucketsLoad, vllm)
	m.loadSeconds = hist(nameLoadSeconds, "Seconds to load an adapter (read, check against the model, upload to the device).", bucketsLoad, own)
	m.loads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: nameLoads, Help: "Adapter loads by result (ok, error).", ConstLabels: own}, []string{"result"})
	m.loads.WithLabelValues("ok")
	m.loads.WithLabelValues("error")
	m.adapters.init(own)
	m.adapterVecs = []*prometheus.CounterVec{m.adapters.requests, m.adapters.prompt, m.adapters.generation,
		m.adapters.cacheQueries, m.adapters.cacheHits}
	// Load counters are not swept with the per-adapter series: they have no adapter label.
	m.adapterVecs = append(m.adapterVecs, m.loads)
	m.state = newStateCollector(m)
	m.prefix = newPrefixCacheCollector(m)
	m.obs.m = m

	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	reg.MustRegister(m)
	if g, ok := reg.(prometheus.Gatherer); ok {
		m.gatherer = g
	} else {
		r := prometheus.NewRegistry()
		r.MustRegister(m)
		m.gatherer = r
	}
	e.SetObserver(&m.obs)
	e.AdapterCache().SetLoadObserver(m.obs.diskLoad)
	return m
}

// Handler serves the registry in the Prometheus text format (the gateway mounts it at GET
// /metrics).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.gatherer, promhttp.HandlerOpts{})
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, h := range m.histograms {
		h.Describe(ch)
	}
	for _, v := range m.adapterVecs {
		v.Describe(ch)
	}
	m.state.Describe(ch)
	m.prefix.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, h := range m.histograms {
		h.Collect(ch)
	}
	models, info := m.e.Models(), m.e.LoRAInfo()
	// Sweep before collecting, so a dropped adapter's series vanish in this very scrape.
	m.adapters.sweep(models, info)
	for _, v := range m.adapterVecs {
		v.Collect(ch)
	}
	m.state.collect(ch, models, info)
	m.prefix.collect(ch)
}
