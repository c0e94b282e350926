package metrics

import (
	"context"
	"fmt"
	"math"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loraplex/loraplex/serve"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// wantTypes is every metric the package exports, with its type.
var wantTypes = map[string]dto.MetricType{
	nameRunning:         dto.MetricType_GAUGE,
	nameWaiting:         dto.MetricType_GAUGE,
	nameKVUsage:         dto.MetricType_GAUGE,
	namePreemptions:     dto.MetricType_COUNTER,
	namePromptToks:      dto.MetricType_COUNTER,
	nameGenToks:         dto.MetricType_COUNTER,
	nameSuccess:         dto.MetricType_COUNTER,
	nameLoRAInfo:        dto.MetricType_GAUGE,
	nameTTFT:            dto.MetricType_HISTOGRAM,
	nameITL:             dto.MetricType_HISTOGRAM,
	nameE2E:             dto.MetricType_HISTOGRAM,
	nameQueue:           dto.MetricType_HISTOGRAM,
	nameAdapterRequests: dto.MetricType_COUNTER,
	nameAdapterPrompt:   dto.MetricType_COUNTER,
	nameAdapterGen:      dto.MetricType_COUNTER,
	nameResident:        dto.MetricType_GAUGE,
	nameBatchRows:       dto.MetricType_HISTOGRAM,
	nameBatchSeqs:       dto.MetricType_HISTOGRAM,
	nameStepSeconds:     dto.MetricType_HISTOGRAM,
	nameRouters:         dto.MetricType_GAUGE,
	nameLoRALoaded:      dto.MetricType_GAUGE,
	nameGPULoaded:       dto.MetricType_GAUGE,
	nameCPULoaded:       dto.MetricType_GAUGE,
	nameMaxGPU:          dto.MetricType_GAUGE,
	nameLoRALoadSeconds: dto.MetricType_HISTOGRAM,
	namePrefixQueries:   dto.MetricType_COUNTER,
	namePrefixHits:      dto.MetricType_COUNTER,
	nameAdapterQueries:  dto.MetricType_COUNTER,
	nameAdapterHits:     dto.MetricType_COUNTER,
}

var vllmLabels = map[string]string{labelModel: "llama", labelEngine: "0"}

type usage struct {
	requests, prompt, gen int
}

// run sends the requests concurrently and returns the usage the streams reported per model.
func run(t *testing.T, e *serve.Engine, reqs []serve.Request) map[string]*usage {
	t.Helper()
	var mu sync.Mutex
	out := map[string]*usage{}
	var wg sync.WaitGroup
	for _, r := range reqs {
		wg.Go(func() {
			s, err := e.Generate(context.Background(), r)
			if err != nil {
				t.Error(err)
				return
			}
			ev, err := s.Collect(context.Background())
			if err != nil || ev.Finish != "length" || ev.Usage == nil {
				t.Errorf("%s: finish %q, usage %v, err %v", r.Model, ev.Finish, ev.Usage, err)
				return
			}
			name := cmp(r.Model, "llama")
			mu.Lock()
			u := out[name]
			if u == nil {
				u = &usage{}
				out[name] = u
			}
			u.requests++
			u.prompt += ev.Usage.PromptTokens
			u.gen += ev.Usage.CompletionTokens
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func req(model string, prompt, maxTokens int) serve.Request {
	p := make([]int, prompt)
	for i := range p {
		p[i] = 3 + (7*i+len(model))%300
	}
	return serve.Request{Model: model, Prompt: p, Params: serve.SamplingParams{MaxTokens: maxTokens, IgnoreEOS: true}}
}

func TestScrapeAfterRequests(t *testing.T) {
	e := newTestEngine(t, serve.Options{MaxNumSeqs: 4, MaxLoRAs: 4})
	reg := prometheus.NewPedanticRegistry()
	m := New(e, reg)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	// Every family exists before the first request, so routers and rate() see zeros, not gaps.
	before := scrape(t, srv.URL)
	for name, typ := range wantTypes {
		mf := before[name]
		if mf == nil {
			t.Errorf("%s missing before any request", name)
			continue
		}
		if mf.GetType() != typ {
			t.Errorf("%s: type %v, want %v", name, mf.GetType(), typ)
		}
	}

	got := run(t, e, []serve.Request{
		req("", 5, 4), req("llama", 9, 6),
		req("a_qv", 7, 5), req("a_qv", 3, 8),
		req("b_all_rslora", 12, 7),
	})
	waitIdle(t, e)
	mfs := scrape(t, srv.URL)
	for name, typ := range wantTypes {
		if mf := mfs[name]; mf == nil || mf.GetType() != typ {
			t.Fatalf("%s: %v, want type %v", name, mf, typ)
		}
	}

	var total usage
	for _, u := range got {
		total.requests += u.requests
		total.prompt += u.prompt
		total.gen += u.gen
	}
	counter := func(name string, l map[string]string) float64 {
		return series(t, mfs, name, l).GetCounter().GetValue()
	}
	gauge := func(name string, l map[string]string) float64 {
		return series(t, mfs, name, l).GetGauge().GetValue()
	}
	eq := func(what string, got float64, want int) {
		t.Helper()
		if got != float64(want) {
			t.Errorf("%s = %v, want %d", what, got, want)
		}
	}

	// vLLM totals equal what the streams reported.
	eq(namePromptToks, counter(namePromptToks, vllmLabels), total.prompt)
	eq(nameGenToks, counter(nameGenToks, vllmLabels), total.gen)
	for _, r := range reasons {
		want := 0
		if r == "length" {
			want = total.requests
		}
		eq(nameSuccess+"{"+r+"}", counter(nameSuccess, map[string]string{labelModel: "llama", labelEngine: "0", labelReason: r}), want)
	}
	eq(namePreemptions, counter(namePreemptions, vllmLabels), 0)
	eq(nameRunning, gauge(nameRunning, vllmLabels), 0)
	eq(nameWaiting, gauge(nameWaiting, vllmLabels), 0)
	if u := gauge(nameKVUsage, vllmLabels); u < 0 || u > 1 {
		t.Errorf("%s = %v, outside [0,1]", nameKVUsage, u)
	}

	// Per adapter (the base model under its own name), and zero series for idle adapters.
	for _, name := range []string{"llama", "a_qv", "b_all_rslora", "c_patterns", "d_regex"} {
		u := got[name]
		if u == nil {
			u = &usage{}
		}
		l := map[string]string{labelAdapter: name}
		eq(nameAdapterPrompt+"{"+name+"}", counter(nameAdapterPrompt, l), u.prompt)
		eq(nameAdapterGen+"{"+name+"}", counter(nameAdapterGen, l), u.gen)
		eq(nameAdapterRequests+"{"+name+",length}", counter(nameAdapterRequests, map[string]string{labelAdapter: name, labelReason: "length"}), u.requests)
	}
	eq(nameResident, gauge(nameResident, map[string]string{labelTier: "device"}), 4)

	// Histograms: vLLM's buckets, and one observation per event.
	hist := func(name string, l map[string]string) *dto.Histogram {
		return series(t, mfs, name, l).GetHistogram()
	}
	for name, buckets := range map[string][]float64{nameTTFT: bucketsTTFT, nameITL: bucketsITL, nameE2E: bucketsRequest, nameQueue: bucketsRequest} {
		var bounds []float64
		for _, b := range hist(name, vllmLabels).GetBucket() {
			if !math.IsInf(b.GetUpperBound(), 1) {
				bounds = append(bounds, b.GetUpperBound())
			}
		}
		if !slices.Equal(bounds, buckets) {
			t.Errorf("%s buckets %v, want %v", name, bounds, buckets)
		}
	}
	eq(nameTTFT+" count", float64(hist(nameTTFT, vllmLabels).GetSampleCount()), total.requests)
	eq(nameITL+" count", float64(hist(nameITL, vllmLabels).GetSampleCount()), total.gen-total.requests)
	eq(nameE2E+" count", float64(hist(nameE2E, vllmLabels).GetSampleCount()), total.requests)
	eq(nameQueue+" count", float64(hist(nameQueue, vllmLabels).GetSampleCount()), total.requests)
	steps := int(e.Stats().Steps.Load())
	own := map[string]string{labelModel: "llama"}
	for _, name := range []string{nameBatchRows, nameBatchSeqs, nameStepSeconds} {
		eq(name+" count", float64(hist(name, own).GetSampleCount()), steps)
	}
	// Every prompt and generated token is one row of some step, except the last generated
	// token of each request, which is sampled but never fed back.
	eq(nameBatchRows+" sum", hist(nameBatchRows, own).GetSampleSum(), total.prompt+total.gen-total.requests)
	if s := hist(nameBatchSeqs, own).GetSampleSum(); s < float64(steps) || s > float64(4*steps) {
		t.Errorf("%s sum %v for %d steps of at most 4 sequences", nameBatchSeqs, s, steps)
	}

	// Idle now: the LoRA snapshot has no adapters, and is a single series.
	if n := len(mfs[nameLoRAInfo].GetMetric()); n != 1 {
		t.Fatalf("%s has %d series", nameLoRAInfo, n)
	}
	info := labelsOf(mfs[nameLoRAInfo].GetMetric()[0])
	if info[labelMaxLoRA] != "4" || info[labelRunning] != "" || info[labelWaiting] != "" {
		t.Errorf("%s labels %v", nameLoRAInfo, info)
	}
}

// TestLoRARequestsInfoWhileRunning holds the engine inside a step while one adapter's request
// runs and another's waits (one sequence per batch), and scrapes in between.
func TestLoRARequestsInfoWhileRunning(t *testing.T) {
	e := newTestEngine(t, serve.Options{MaxNumSeqs: 1, MaxLoRAs: 1})
	m := New(e, prometheus.NewRegistry())
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	g := newGate(t, e, &m.obs)
	start := time.Now()

	ctx := context.Background()
	a, err := e.Generate(ctx, req("c_patterns", 6, 8))
	if err != nil {
		t.Fatal(err)
	}
	g.wait(t) // step 1: c_patterns prefills
	b, err := e.Generate(ctx, req("d_regex", 4, 3))
	if err != nil {
		t.Fatal(err)
	}
	g.next(t) // step 2: the loop has taken d_regex into its waiting list
	g.next(t) // step 3: ...and published a snapshot showing it
	mfs := scrape(t, srv.URL)
	g.open()

	if n := len(mfs[nameLoRAInfo].GetMetric()); n != 1 {
		t.Fatalf("%s has %d series", nameLoRAInfo, n)
	}
	info := mfs[nameLoRAInfo].GetMetric()[0]
	want := map[string]string{labelMaxLoRA: "1", labelRunning: "c_patterns", labelWaiting: "d_regex"}
	if l := labelsOf(info); fmt.Sprint(l) != fmt.Sprint(want) {
		t.Errorf("%s labels %v, want %v", nameLoRAInfo, l, want)
	}
	if ts := info.GetGauge().GetValue(); ts < float64(start.Unix()) || ts > float64(time.Now().Unix()+1) {
		t.Errorf("%s = %v, not the snapshot time (test started at %d)", nameLoRAInfo, ts, start.Unix())
	}
	if v := series(t, mfs, nameRunning, vllmLabels).GetGauge().GetValue(); v != 1 {
		t.Errorf("%s = %v, want 1", nameRunning, v)
	}
	if v := series(t, mfs, nameWaiting, vllmLabels).GetGauge().GetValue(); v != 1 {
		t.Errorf("%s = %v, want 1", nameWaiting, v)
	}
	if u := series(t, mfs, nameKVUsage, vllmLabels).GetGauge().GetValue(); u <= 0 || u > 1 {
		t.Errorf("%s = %v with a running request, want in (0,1]", nameKVUsage, u)
	}

	for _, s := range []*serve.Stream{a, b} {
		if _, err := s.Collect(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitIdle(t, e)
	l := labelsOf(scrape(t, srv.URL)[nameLoRAInfo].GetMetric()[0])
	if l[labelRunning] != "" || l[labelWaiting] != "" {
		t.Errorf("%s still %v after the requests finished", nameLoRAInfo, l)
	}
}

// TestUnloadedAdapterSeriesDropped: cardinality follows the loaded adapters.
func TestUnloadedAdapterSeriesDropped(t *testing.T) {
	e := newTestEngine(t, serve.Options{MaxNumSeqs: 2})
	m := New(e, prometheus.NewRegistry())
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	run(t, e, []serve.Request{req("d_regex", 4, 2)})
	waitIdle(t, e)
	has := func(mfs map[string]*dto.MetricFamily) bool {
		for _, s := range mfs[nameAdapterGen].GetMetric() {
			if labelsOf(s)[labelAdapter] == "d_regex" {
				return true
			}
		}
		return false
	}
	if !has(scrape(t, srv.URL)) {
		t.Fatal("no series for d_regex while loaded")
	}
	if err := e.UnloadAdapter("d_regex"); err != nil {
		t.Fatal(err)
	}
	scrape(t, srv.URL) // a request finished since the last sweep: one grace scrape
	mfs := scrape(t, srv.URL)
	if has(mfs) {
		t.Error("d_regex series still exported after unload")
	}
	if v := series(t, mfs, nameResident, map[string]string{labelTier: "device"}).GetGauge().GetValue(); v != 3 {
		t.Errorf("%s = %v after unloading one of 4", nameResident, v)
	}
}

// TestAdapterLoads: loads after the exporter is installed are timed and counted by result.
func TestAdapterLoads(t *testing.T) {
	e := newTestEngine(t, serve.Options{MaxNumSeqs: 2})
	m := New(e, prometheus.NewRegistry())
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	dir := filepath.Join("..", "..", "testdata", "models")
	if err := e.LoadAdapter("again", filepath.Join(dir, "llama", "adapters", "a_qv")); err != nil {
		t.Fatal(err)
	}
	if err := e.LoadAdapter("wrong_model", filepath.Join(dir, "qwen3", "adapters", "a_qv")); err == nil {
		t.Fatal("a qwen3 adapter loaded onto llama")
	}
	mfs := scrape(t, srv.URL)
	// The cache saw the good load reach the device and the bad one fail on its way to the host.
	if v := series(t, mfs, "loraplex_adapter_cache_transfers_total", map[string]string{"stage": "disk_to_host", "result": "error"}).GetCounter().GetValue(); v != 1 {
		t.Errorf("disk_to_host errors = %v, want 1", v)
	}
	if v := series(t, mfs, "loraplex_adapter_cache_bytes", map[string]string{labelTier: "device"}).GetGauge().GetValue(); v <= 0 {
		t.Errorf("device bytes %v", v)
	}
	for result, want := range map[string]float64{"ok": 1, "error": 1} {
		if v := series(t, mfs, "loraplex_adapter_loads_total", map[string]string{"result": result}).GetCounter().GetValue(); v != want {
			t.Errorf("loads{result=%s} = %v, want %v", result, v, want)
		}
	}
	if n := series(t, mfs, "loraplex_adapter_load_seconds", nil).GetHistogram().GetSampleCount(); n != 2 {
		t.Errorf("load_seconds count %d, want 2", n)
	}
}

// TestLint runs promlint over everything the package exports. The only accepted problem is the
// colon in vLLM's names, which routers depend on.
func TestLint(t *testing.T) {
	e := newTestEngine(t, serve.Options{MaxNumSeqs: 2})
	m := New(e, prometheus.NewRegistry())
	run(t, e, []serve.Request{req("a_qv", 4, 3), req("", 4, 3)})
	problems, err := testutil.CollectAndLint(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "vllm:") && p.Text == "metric names should not contain ':'" {
			continue
		}
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}
