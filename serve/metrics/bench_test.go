package metrics

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/loraplex/loraplex/serve"
	"github.com/prometheus/client_golang/prometheus"
)

// observeAll is one step's worth of observer calls, for an adapter request that finishes.
func observeAll(o serve.Observer, fr serve.FinishedRequest) {
	o.Step(24, 8, 3*time.Millisecond)
	o.(serve.PrefixCacheObserver).PrefixCacheLookup(fr.Model, fr.PromptTokens, 16)
	o.FirstToken(fr.Model, 40*time.Millisecond)
	o.NextToken(fr.Model, 9*time.Millisecond)
	o.Finished(fr)
}

var benchFinished = serve.FinishedRequest{Model: "b_all_rslora", Reason: "stop", PromptTokens: 17,
	CompletionTokens: 5, Queue: time.Millisecond, E2E: 80 * time.Millisecond}

func TestObserverAllocFree(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates")
	}
	m := New(newTestEngine(t, serve.Options{}), prometheus.NewRegistry())
	observeAll(&m.obs, benchFinished) // the first request of an adapter creates its series
	if n := testing.AllocsPerRun(1000, func() { observeAll(&m.obs, benchFinished) }); n != 0 {
		t.Fatalf("observer calls allocate %v times per step", n)
	}
}

func BenchmarkObserver(b *testing.B) {
	m := New(newTestEngine(b, serve.Options{}), prometheus.NewRegistry())
	observeAll(&m.obs, benchFinished)
	b.ReportAllocs()
	for b.Loop() {
		observeAll(&m.obs, benchFinished)
	}
}

func BenchmarkScrape(b *testing.B) {
	e := newTestEngine(b, serve.Options{})
	m := New(e, prometheus.NewRegistry())
	for _, a := range []string{"", "a_qv", "b_all_rslora", "c_patterns", "d_regex"} {
		observeAll(&m.obs, serve.FinishedRequest{Model: cmp(a, "llama"), Reason: "length", PromptTokens: 3, CompletionTokens: 2})
	}
	h := m.Handler()
	req := httptest.NewRequest("GET", "/metrics", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}
