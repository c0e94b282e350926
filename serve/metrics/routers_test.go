package metrics

import (
	"context"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/loraplex/loraplex/internal/testengine"
	"github.com/loraplex/loraplex/serve"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// TestRouterSelections: with the fixture routers loaded, a real /metrics scrape shows
// loraplex_routers and one loraplex_router_expert_selections_total series per router, expert
// and layer, zero before any request; after routed requests every series equals the count of
// (token, layer) top-1 choices in the requests' expert traces; an unloaded router's series go.
func TestRouterSelections(t *testing.T) {
	e := newTestEngine(t, serve.Options{MaxNumSeqs: 8})
	cases := testengine.LoadRouters(t, e, "llama")
	reg := prometheus.NewPedanticRegistry()
	m := New(e, reg)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	routers := e.Routers()
	wantSeries := 0
	for _, r := range routers {
		wantSeries += r.Layers * len(r.Experts)
	}
	mfs := scrape(t, srv.URL)
	if v := series(t, mfs, nameRouters, map[string]string{labelModel: "llama"}).GetGauge().GetValue(); v != float64(len(routers)) {
		t.Errorf("%s = %v, want %d", nameRouters, v, len(routers))
	}
	sel := mfs[nameRouterSelect]
	if sel == nil || sel.GetType() != dto.MetricType_COUNTER || len(sel.GetMetric()) != wantSeries {
		t.Fatalf("%s before requests: %v, want %d counter series", nameRouterSelect, sel, wantSeries)
	}
	if !strings.Contains(sel.GetHelp(), "top-1 expert") {
		t.Errorf("help %q", sel.GetHelp())
	}
	for _, s := range sel.GetMetric() {
		if s.GetCounter().GetValue() != 0 {
			t.Errorf("%v nonzero before any request", labelsOf(s))
		}
	}

	// Every routed case once, traced, all at once.
	var mu sync.Mutex
	want := map[[3]string]int{} // router, expert, layer
	var wg sync.WaitGroup
	for _, c := range cases {
		wg.Go(func() {
			s, err := e.Generate(context.Background(), serve.Request{Model: c.Adapter, Prompt: c.Prompt,
				Params: serve.SamplingParams{MaxTokens: len(c.Steps), IgnoreEOS: true}, TraceExperts: true})
			if err != nil {
				t.Error(err)
				return
			}
			for {
				ev, ok := s.Next(context.Background())
				if !ok {
					break
				}
				if ev.Err != nil {
					t.Error(ev.Err)
					return
				}
				mu.Lock()
				for _, layers := range ev.Experts {
					for l, x := range layers {
						if x != "" {
							want[[3]string{c.Adapter, x, strconv.Itoa(l)}]++
						}
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	waitIdle(t, e)
	if len(want) == 0 {
		t.Fatal("no expert was ever chosen")
	}
	mfs = scrape(t, srv.URL)
	total := 0.0
	for _, s := range mfs[nameRouterSelect].GetMetric() {
		l := labelsOf(s)
		if l[labelModel] != "llama" {
			t.Errorf("series %v lacks model_name", l)
		}
		got, exp := s.GetCounter().GetValue(), want[[3]string{l[labelRouter], l[labelExpert], l[labelLayer]}]
		if got != float64(exp) {
			t.Errorf("%s%v = %v, want %d", nameRouterSelect, l, got, exp)
		}
		total += got
	}
	if n := len(mfs[nameRouterSelect].GetMetric()); n != wantSeries || total == 0 {
		t.Errorf("%d series, total %v", n, total)
	}

	problems, err := testutil.CollectAndLint(m, nameRouterSelect, nameRouters)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	// Unloading a router drops its series.
	gone := routers[0]
	if err := e.UnloadRouter(gone.Name); err != nil {
		t.Fatal(err)
	}
	mfs = scrape(t, srv.URL)
	for _, s := range mfs[nameRouterSelect].GetMetric() {
		if labelsOf(s)[labelRouter] == gone.Name {
			t.Fatalf("series of unloaded router %q still exported", gone.Name)
		}
	}
	if v := series(t, mfs, nameRouters, nil).GetGauge().GetValue(); v != float64(len(routers)-1) {
		t.Errorf("%s = %v after an unload", nameRouters, v)
	}
}
