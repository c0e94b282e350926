package metrics

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/loraplex/loraplex/internal/testengine"

	"github.com/loraplex/loraplex/serve"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	prommodel "github.com/prometheus/common/model"
)

// newTestEngine serves the llama fixture with its four adapters on the CPU backend (the same
// setup as serve's engine tests).
func newTestEngine(t testing.TB, opt serve.Options) *serve.Engine {
	t.Helper()
	return testengine.New(t, "llama", opt)
}

// scrape GETs url and parses the text exposition with the legacy name rules, the strictest
// ones a scraper may apply (colons are legal there).
func scrape(t testing.TB, url string) map[string]*dto.MetricFamily {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(prommodel.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// series returns the one series of family name whose labels include want.
func series(t testing.TB, mfs map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		t.Fatalf("%s missing", name)
	}
	var found *dto.Metric
	for _, m := range mf.GetMetric() {
		if hasLabels(m, want) {
			if found != nil {
				t.Fatalf("%s%v: more than one series", name, want)
			}
			found = m
		}
	}
	if found == nil {
		t.Fatalf("%s%v: no such series", name, want)
	}
	return found
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

func labelsOf(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

// gate wraps the metrics observer and, while armed, stops the engine loop inside every Step
// until the test lets it go: the test then knows exactly which iterations have published
// their state.
type gate struct {
	serve.Observer
	armed chan struct{} // closed: pass through
	once  sync.Once
	at    chan struct{} // unbuffered: the loop is inside Step
	run   chan struct{} // buffered, so releasing never blocks the test
}

// newGate installs an armed gate in front of inner; the test's cleanup opens it before the
// engine is closed, so a failing test cannot leave the loop blocked.
func newGate(t testing.TB, e *serve.Engine, inner serve.Observer) *gate {
	g := &gate{Observer: inner, armed: make(chan struct{}), at: make(chan struct{}), run: make(chan struct{}, 1)}
	e.SetObserver(g)
	t.Cleanup(g.open)
	return g
}

func (g *gate) Step(rows, seqs int, d time.Duration) {
	g.Observer.Step(rows, seqs, d)
	select {
	case <-g.armed:
		return
	case g.at <- struct{}{}:
	}
	<-g.run
}

// next lets the blocked step finish and waits for the next one to block.
func (g *gate) next(t testing.TB) {
	t.Helper()
	g.run <- struct{}{}
	g.wait(t)
}

func (g *gate) wait(t testing.TB) {
	t.Helper()
	select {
	case <-g.at:
	case <-time.After(10 * time.Second):
		t.Fatal("the engine never reached the next step")
	}
}

// open disarms the gate and releases a step blocked in it, if any.
func (g *gate) open() {
	g.once.Do(func() { close(g.armed) })
	select {
	case g.run <- struct{}{}:
	default:
	}
}

// waitIdle waits for the loop to publish its state after the last request finished: a stream
// ends inside a step, and the loop stores its counts and LoRA snapshot after that step.
func waitIdle(t testing.TB, e *serve.Engine) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, info := e.Stats(), e.LoRAInfo()
		if st.Running.Load() == 0 && st.Waiting.Load() == 0 && st.KVPagesUsed.Load() == 0 &&
			len(info.Running) == 0 && len(info.Waiting) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the engine did not become idle")
		}
		time.Sleep(time.Millisecond)
	}
}
