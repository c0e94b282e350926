package metrics

import (
	"github.com/loraplex/loraplex/serve"
	"github.com/prometheus/client_golang/prometheus"
)

// The prefix cache's metrics: vLLM v1's vllm:prefix_cache_queries_total and
// vllm:prefix_cache_hits_total, read at scrape time from the engine's counters (prompt tokens
// looked up at each request's first admission, and those found cached), and the same per
// adapter (loraplex_adapter_prefix_cache_*_total, swept with the other per-adapter series),
// fed by the observer. hits / queries is the hit rate the Grafana dashboard plots. Beside
// them, loraplex_kv_events_dropped_total counts the cache's KV events (--kv-events-config) that
// a full publisher queue dropped: a subscriber's index missing pages shows here.
type prefixCacheCollector struct {
	m                      *Metrics
	queries, hits, dropped *prometheus.Desc
}

func newPrefixCacheCollector(m *Metrics) *prefixCacheCollector {
	vllm := prometheus.Labels{labelModel: m.base, labelEngine: engineIndex}
	return &prefixCacheCollector{
		m:       m,
		queries: prometheus.NewDesc(namePrefixQueries, "Prefix cache queries, in terms of number of queried tokens.", nil, vllm),
		hits:    prometheus.NewDesc(namePrefixHits, "Prefix cache hits, in terms of number of cached tokens.", nil, vllm),
		dropped: prometheus.NewDesc(nameKVEventsDropped, "KV-cache events dropped because the publisher's queue was full.", nil, vllm),
	}
}

func (c *prefixCacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.queries
	ch <- c.hits
	ch <- c.dropped
}

func (c *prefixCacheCollector) collect(ch chan<- prometheus.Metric) {
	st := c.m.e.Stats()
	ch <- prometheus.MustNewConstMetric(c.queries, prometheus.CounterValue, float64(st.PrefixCacheQueries.Load()))
	ch <- prometheus.MustNewConstMetric(c.hits, prometheus.CounterValue, float64(st.PrefixCacheHits.Load()))
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(st.KVEventsDropped.Load()))
}

var _ serve.PrefixCacheObserver = (*observer)(nil)

// PrefixCacheLookup feeds the per-adapter prefix-cache counters (no allocation: adapterCache).
func (o *observer) PrefixCacheLookup(model string, queried, hit int) {
	s := o.m.adapters.get(model)
	s.cacheQueries.Add(float64(queried))
	s.cacheHits.Add(float64(hit))
	s.touched.Store(true)
}
