package metrics

import (
	"sync"
	"sync/atomic"

	"github.com/loraplex/loraplex/serve"
	"github.com/prometheus/client_golang/prometheus"
)

// adapterSeries are one adapter's (or the base model's) counters, curried once so the observer
// never resolves label values on the scheduler goroutine.
type adapterSeries struct {
	requests   [len(reasons)]prometheus.Counter
	prompt     prometheus.Counter
	generation prometheus.Counter
	// Prompt tokens looked up in the prefix cache and found there (prefixcache.go).
	cacheQueries, cacheHits prometheus.Counter
	touched                 atomic.Bool // a request finished since the last sweep
}

// adapterCache maps a model name to its curried series. Reads are a plain map lookup on an
// immutable map behind an atomic pointer; writers (a new adapter, a sweep) copy the map under
// mu. A sync.Map would box the string key into an interface on every Load, one allocation per
// finished request on the engine loop; this way the hot path allocates nothing. The map holds
// at most the loaded adapters plus the base model, so copying it on a change is cheap.
type adapterCache struct {
	requests, prompt, generation *prometheus.CounterVec
	cacheQueries, cacheHits      *prometheus.CounterVec

	mu sync.Mutex
	m  atomic.Pointer[map[string]*adapterSeries]
}

func (c *adapterCache) init(l prometheus.Labels) {
	c.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: nameAdapterRequests, ConstLabels: l,
		Help: "Finished requests per adapter (the base model's name for requests without one) and finish reason.",
	}, []string{labelAdapter, labelReason})
	c.prompt = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: nameAdapterPrompt, ConstLabels: l,
		Help: "Prompt tokens of finished requests per adapter (requests that reached their first token).",
	}, []string{labelAdapter})
	c.generation = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: nameAdapterGen, ConstLabels: l,
		Help: "Generated tokens of finished requests per adapter.",
	}, []string{labelAdapter})
	c.cacheQueries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: nameAdapterQueries, ConstLabels: l,
		Help: "Prompt tokens looked up in the prefix cache per adapter (vllm:prefix_cache_queries_total by adapter).",
	}, []string{labelAdapter})
	c.cacheHits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: nameAdapterHits, ConstLabels: l,
		Help: "Prompt tokens found in the prefix cache per adapter (vllm:prefix_cache_hits_total by adapter).",
	}, []string{labelAdapter})
	c.m.Store(&map[string]*adapterSeries{})
}

// get returns name's series, creating them on first use.
func (c *adapterCache) get(name string) *adapterSeries {
	if s := (*c.m.Load())[name]; s != nil {
		return s
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addLocked(name)
}

func (c *adapterCache) addLocked(name string) *adapterSeries {
	old := *c.m.Load()
	if s := old[name]; s != nil {
		return s
	}
	s := &adapterSeries{prompt: c.prompt.WithLabelValues(name), generation: c.generation.WithLabelValues(name),
		cacheQueries: c.cacheQueries.WithLabelValues(name), cacheHits: c.cacheHits.WithLabelValues(name)}
	for i, r := range reasons {
		s.requests[i] = c.requests.WithLabelValues(name, r)
	}
	next := make(map[string]*adapterSeries, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[name] = s
	c.m.Store(&next)
	return s
}

// sweep runs at scrape time. It creates zero-valued series for every loaded model, so rate()
// has a starting point before an adapter's first request, and drops the series of names that
// are no longer loaded, have no running or waiting request, and finished no request since the
// previous sweep (the grace scrape lets requests that outlive an unload be counted once more).
func (c *adapterCache) sweep(models []serve.ModelInfo, info serve.LoRAInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, mi := range models {
		c.addLocked(mi.ID)
	}
	cur := *c.m.Load()
	if len(cur) == len(models) {
		return // every entry is a loaded model: nothing to drop
	}
	live := make(map[string]bool, len(models)+len(info.Running)+len(info.Waiting))
	for _, mi := range models {
		live[mi.ID] = true
	}
	for _, n := range info.Running {
		live[n] = true
	}
	for _, n := range info.Waiting {
		live[n] = true
	}
	var next map[string]*adapterSeries
	for name, s := range cur {
		if live[name] || s.touched.Swap(false) {
			continue
		}
		if next == nil {
			next = make(map[string]*adapterSeries, len(cur))
			for k, v := range cur {
				next[k] = v
			}
		}
		delete(next, name)
		c.prompt.DeleteLabelValues(name)
		c.generation.DeleteLabelValues(name)
		c.cacheQueries.DeleteLabelValues(name)
		c.cacheHits.DeleteLabelValues(name)
		for _, r := range reasons {
			c.requests.DeleteLabelValues(name, r)
		}
	}
	if next != nil {
		c.m.Store(&next)
	}
}
