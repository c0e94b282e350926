package metrics

import (
	"net/http/httptest"
	"testing"

	"github.com/loraplex/loraplex/serve"
	"github.com/prometheus/client_golang/prometheus"
)

// vllm:prefix_cache_queries_total and vllm:prefix_cache_hits_total count prompt tokens looked
// up and found cached, as vLLM v1 does, and the loraplex_adapter_prefix_cache_* series split
// them per adapter: a prompt run twice on one adapter hits its full pages the second time, and
// the same prompt on another adapter hits nothing.
func TestPrefixCacheCounters(t *testing.T) {
	e := newTestEngine(t, serve.Options{PageSize: 4})
	m := New(e, prometheus.NewPedanticRegistry())
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	for _, r := range []serve.Request{req("a_qv", 13, 2), req("a_qv", 13, 2), req("b_all_rslora", 13, 2)} {
		r.Prompt = req("a_qv", 13, 2).Prompt // the same tokens for both adapters
		run(t, e, []serve.Request{r})
	}
	waitIdle(t, e)
	mfs := scrape(t, srv.URL)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{namePrefixQueries, vllmLabels, 39},
		{namePrefixHits, vllmLabels, 12},
		{nameAdapterQueries, map[string]string{labelAdapter: "a_qv"}, 26},
		{nameAdapterHits, map[string]string{labelAdapter: "a_qv"}, 12},
		{nameAdapterQueries, map[string]string{labelAdapter: "b_all_rslora"}, 13},
		{nameAdapterHits, map[string]string{labelAdapter: "b_all_rslora"}, 0},
		{nameAdapterHits, map[string]string{labelAdapter: "llama"}, 0},
	} {
		if got := series(t, mfs, c.name, c.labels).GetCounter().GetValue(); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// loraplex_kv_events_dropped_total shows the engine's count of KV-cache events a full publisher
// queue dropped (serve's TestKVEventLogDropsWhenTheQueueIsFull fills the queue itself).
func TestKVEventsDroppedCounter(t *testing.T) {
	e := newTestEngine(t, serve.Options{})
	m := New(e, prometheus.NewPedanticRegistry())
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	if got := series(t, scrape(t, srv.URL), nameKVEventsDropped, vllmLabels).GetCounter().GetValue(); got != 0 {
		t.Fatalf("%s = %v before any drop", nameKVEventsDropped, got)
	}
	e.Stats().KVEventsDropped.Add(3)
	if got := series(t, scrape(t, srv.URL), nameKVEventsDropped, vllmLabels).GetCounter().GetValue(); got != 3 {
		t.Fatalf("%s = %v, want 3", nameKVEventsDropped, got)
	}
}
