package metrics

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/testengine"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/serve"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// configRank is an adapter's rank as its adapter_config.json states it: r, or the largest value
// of rank_pattern when that is larger (the oracle for the rank label, read independently of the
// loader).
func configRank(t testing.TB, adapter string) int {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(fixture.AdapterDir("llama", adapter), "adapter_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		R           int            `json:"r"`
		RankPattern map[string]int `json:"rank_pattern"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	r := c.R
	for _, v := range c.RankPattern {
		r = max(r, v)
	}
	return r
}

// loaded maps adapter_name to the labels of its vllm:lora_adapter_loaded series, failing on a
// value other than 1 or a name exported twice.
func loaded(t testing.TB, mfs map[string]*dto.MetricFamily) map[string]map[string]string {
	t.Helper()
	mf := mfs[nameLoRALoaded]
	if mf == nil {
		t.Fatalf("%s missing", nameLoRALoaded)
	}
	if mf.GetType() != dto.MetricType_GAUGE {
		t.Fatalf("%s is a %v", nameLoRALoaded, mf.GetType())
	}
	out := map[string]map[string]string{}
	for _, s := range mf.GetMetric() {
		l := labelsOf(s)
		if s.GetGauge().GetValue() != 1 {
			t.Errorf("%s%v = %v, want 1", nameLoRALoaded, l, s.GetGauge().GetValue())
		}
		if out[l[labelAdapterName]] != nil {
			t.Errorf("%s: two series for %q", nameLoRALoaded, l[labelAdapterName])
		}
		out[l[labelAdapterName]] = l
	}
	return out
}

func levels(t testing.TB, mfs map[string]*dto.MetricFamily) map[string]string {
	t.Helper()
	out := map[string]string{}
	for name, l := range loaded(t, mfs) {
		out[name] = l[labelLevel]
	}
	return out
}

func gaugeOf(t testing.TB, mfs map[string]*dto.MetricFamily, name string) float64 {
	t.Helper()
	return series(t, mfs, name, vllmLabels).GetGauge().GetValue()
}

// Every resident adapter is exported once at its best tier with its rank, from the first scrape
// (before any request), and the counts and slot limit match; a request moves its adapter to the
// device and the least recently used one back to host memory; an unloaded adapter's series
// goes; every load from disk after the exporter is installed is one observation of
// vllm:lora_adapter_load_seconds, a failed one none.
func TestAdapterResidency(t *testing.T) {
	// Two device slots for four adapters: the startup loads leave the last two on the device
	// and all four in host memory.
	// The adapter dir holds one more adapter, ondemand (a copy of a_qv), loaded by name on the
	// first request for it.
	adapterDir := t.TempDir()
	copyAdapter(t, fixture.AdapterDir("llama", "a_qv"), filepath.Join(adapterDir, "ondemand"))
	e := newTestEngine(t, serve.Options{MaxNumSeqs: 2, MaxLoRAs: 2, AdapterDirs: []string{adapterDir}})
	reg := prometheus.NewPedanticRegistry()
	m := New(e, reg)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	mfs := scrape(t, srv.URL)
	got := loaded(t, mfs)
	want := map[string]string{"a_qv": "cpu", "b_all_rslora": "cpu", "c_patterns": "gpu", "d_regex": "gpu"}
	if len(got) != len(want) {
		t.Fatalf("%s: %v, want %v", nameLoRALoaded, got, want)
	}
	for name, level := range want {
		l := got[name]
		wantLabels := map[string]string{labelModel: "llama", labelEngine: "0", labelAdapterName: name,
			labelLevel: level, labelPinned: "false", labelRank: strconv.Itoa(configRank(t, name))}
		if !maps(l, wantLabels) {
			t.Errorf("%s{%s}: labels %v, want %v", nameLoRALoaded, name, l, wantLabels)
		}
	}
	for name, want := range map[string]float64{nameGPULoaded: 2, nameCPULoaded: 4, nameMaxGPU: 2} {
		if v := gaugeOf(t, mfs, name); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	if n := series(t, mfs, nameLoRALoadSeconds, vllmLabels).GetHistogram().GetSampleCount(); n != 0 {
		t.Errorf("%s count %d before any load through the exporter", nameLoRALoadSeconds, n)
	}

	// A request for a_qv uploads it into the least recently used slot (c_patterns').
	run(t, e, []serve.Request{req("a_qv", 4, 2)})
	waitIdle(t, e)
	mfs = scrape(t, srv.URL)
	if l := levels(t, mfs); l["a_qv"] != "gpu" || l["c_patterns"] != "cpu" || l["d_regex"] != "gpu" || l["b_all_rslora"] != "cpu" {
		t.Errorf("after a request for a_qv: levels %v", l)
	}
	if v := gaugeOf(t, mfs, nameGPULoaded); v != 2 {
		t.Errorf("%s = %v after a swap, want 2", nameGPULoaded, v)
	}

	// A load through the API reads from disk once; a failed one is not a load time.
	dir := filepath.Join("..", "..", "testdata", "models")
	if err := e.LoadAdapter("again", filepath.Join(dir, "llama", "adapters", "d_regex")); err != nil {
		t.Fatal(err)
	}
	if err := e.LoadAdapter("wrong_model", filepath.Join(dir, "qwen3", "adapters", "a_qv")); err == nil {
		t.Fatal("a qwen3 adapter loaded onto llama")
	}
	if err := e.UnloadAdapter("b_all_rslora"); err != nil {
		t.Fatal(err)
	}
	mfs = scrape(t, srv.URL)
	got = loaded(t, mfs)
	if got["b_all_rslora"] != nil || got["wrong_model"] != nil {
		t.Errorf("unloaded or failed adapters still exported: %v", got)
	}
	if l := got["again"]; l == nil || l[labelLevel] != "gpu" || l[labelRank] != strconv.Itoa(configRank(t, "d_regex")) {
		t.Errorf("again: %v, want on the gpu with d_regex's rank", l)
	}
	if v := gaugeOf(t, mfs, nameCPULoaded); v != 4 {
		t.Errorf("%s = %v, want 4 (a_qv, c_patterns, d_regex, again)", nameCPULoaded, v)
	}
	h := series(t, mfs, nameLoRALoadSeconds, vllmLabels).GetHistogram()
	if h.GetSampleCount() != 1 || h.GetSampleSum() <= 0 {
		t.Errorf("%s: count %d sum %v, want one positive load", nameLoRALoadSeconds, h.GetSampleCount(), h.GetSampleSum())
	}

	// A request naming an adapter that is only on the adapter dir's disk loads it: one more load.
	run(t, e, []serve.Request{req("ondemand", 4, 2)})
	waitIdle(t, e)
	mfs = scrape(t, srv.URL)
	if l := loaded(t, mfs)["ondemand"]; l == nil || l[labelLevel] != "gpu" || l[labelRank] != strconv.Itoa(configRank(t, "a_qv")) {
		t.Errorf("ondemand after its request: %v, want on the gpu with a_qv's rank", l)
	}
	if n := series(t, mfs, nameLoRALoadSeconds, vllmLabels).GetHistogram().GetSampleCount(); n != 2 {
		t.Errorf("%s count %d after an on-demand load, want 2", nameLoRALoadSeconds, n)
	}
}

// copyAdapter copies an adapter folder's files to dst.
func copyAdapter(t testing.TB, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range ents {
		raw, err := os.ReadFile(filepath.Join(src, en.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, en.Name()), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// maps reports whether got has exactly the labels of want.
func maps(got, want map[string]string) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// heldUploads is the CPU backend with uploads that wait, while held, until the test lets them
// go: an adapter's move into a device slot takes as long as the test wants, as a slow PCIe copy
// would, while everything else runs on the real backend.
type heldUploads struct {
	*cpu.Backend // every capability of the real backend (sampling, aliasing uploads) promoted
	held         atomic.Bool
	entered      chan struct{} // an upload is waiting
	release      chan struct{} // closed: uploads go on
	once         atomic.Bool
}

func (b *heldUploads) Upload(h model.HostTensor, rows, cols int) (model.Tensor, error) {
	if b.held.Load() {
		select {
		case b.entered <- struct{}{}:
		default:
		}
		<-b.release
	}
	return b.Backend.Upload(h, rows, cols)
}

func (b *heldUploads) let() {
	if !b.once.Swap(true) {
		close(b.release)
	}
}

// newHeldEngine serves the llama fixture with its four adapters like testengine.New, on a
// backend whose uploads the test can hold up. The uploads are let go before the engine closes.
func newHeldEngine(t *testing.T, opt serve.Options) (*serve.Engine, *heldUploads) {
	t.Helper()
	dir := fixture.Dir("llama")
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	cb := cpu.New(2)
	b := &heldUploads{Backend: cb, entered: make(chan struct{}, 1), release: make(chan struct{})}
	w, err := model.LoadWeights(dir, cfg, b)
	if err != nil {
		cb.Close()
		t.Fatal(err)
	}
	opt.ModelName = "llama"
	opt.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := serve.NewEngine(cfg, b, w, nil, opt)
	if err != nil {
		cb.Close()
		w.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { b.let(); e.Close(); cb.Close(); w.Close() })
	for _, a := range fixture.Adapters {
		if err := e.LoadAdapter(a, fixture.AdapterDir("llama", a)); err != nil {
			t.Fatal(err)
		}
	}
	return e, b
}

// An adapter whose requests all wait for its load shows only in waiting_lora_adapters, and as
// host-resident, while a resident adapter's request runs and shows only in running (vLLM puts
// every adapter with a request in flight into both labels); max_lora is the device slots. Once
// the load completes the adapter is on the gpu level and its requests finish.
func TestLoRARequestsInfoWaitingForLoad(t *testing.T) {
	e, b := newHeldEngine(t, serve.Options{MaxNumSeqs: 4, MaxLoRAs: 2})
	m := New(e, prometheus.NewRegistry())
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	g := newGate(t, e, &m.obs)

	// The startup loads leave c_patterns and d_regex on the device.
	ctx := context.Background()
	b.held.Store(true)
	running, err := e.Generate(ctx, req("c_patterns", 6, 8))
	if err != nil {
		t.Fatal(err)
	}
	g.wait(t) // step 1: c_patterns prefills
	var waiting []*serve.Stream
	for range 2 {
		s, err := e.Generate(ctx, req("a_qv", 5, 3))
		if err != nil {
			t.Fatal(err)
		}
		waiting = append(waiting, s)
	}
	select {
	case <-b.entered: // a_qv's upload into d_regex's slot has started, and waits
	case <-time.After(10 * time.Second):
		t.Fatal("a_qv's upload never started")
	}
	g.next(t) // step 2: the loop has taken the a_qv requests into its waiting list
	g.next(t) // step 3: ...and published a snapshot showing them
	mfs := scrape(t, srv.URL)

	info := mfs[nameLoRAInfo].GetMetric()
	if len(info) != 1 {
		t.Fatalf("%s has %d series", nameLoRAInfo, len(info))
	}
	wantInfo := map[string]string{labelMaxLoRA: "2", labelRunning: "c_patterns", labelWaiting: "a_qv"}
	if l := labelsOf(info[0]); !maps(l, wantInfo) {
		t.Errorf("%s labels %v, want %v", nameLoRAInfo, l, wantInfo)
	}
	if v := gaugeOf(t, mfs, nameRunning); v != 1 {
		t.Errorf("%s = %v, want 1", nameRunning, v)
	}
	if v := gaugeOf(t, mfs, nameWaiting); v != 2 {
		t.Errorf("%s = %v, want 2", nameWaiting, v)
	}
	// a_qv is uploading (host-resident), d_regex was evicted to make room for it.
	wantLevels := map[string]string{"a_qv": "cpu", "b_all_rslora": "cpu", "c_patterns": "gpu", "d_regex": "cpu"}
	if l := levels(t, mfs); !maps(l, wantLevels) {
		t.Errorf("levels while a_qv loads: %v, want %v", l, wantLevels)
	}
	if v := gaugeOf(t, mfs, nameGPULoaded); v != 1 {
		t.Errorf("%s = %v while one slot is being filled, want 1", nameGPULoaded, v)
	}

	b.let()
	g.open()
	for _, s := range append(waiting, running) {
		if ev, err := s.Collect(ctx); err != nil || ev.Finish != "length" {
			t.Fatalf("finish %q, err %v", ev.Finish, err)
		}
	}
	waitIdle(t, e)
	mfs = scrape(t, srv.URL)
	if l := levels(t, mfs); l["a_qv"] != "gpu" {
		t.Errorf("a_qv at level %q after its load, want gpu", l["a_qv"])
	}
	l := labelsOf(mfs[nameLoRAInfo].GetMetric()[0])
	if l[labelRunning] != "" || l[labelWaiting] != "" {
		t.Errorf("%s still %v after the requests finished", nameLoRAInfo, l)
	}
}

// A request naming a router counts, in vllm:lora_requests_info, as the expert adapters it
// leases, not under the router's name: the experts hold device slots, the router none.
func TestLoRARequestsInfoRouterCountsAsExperts(t *testing.T) {
	e := newTestEngine(t, serve.Options{MaxNumSeqs: 1, MaxLoRAs: 4})
	cases := testengine.LoadRouters(t, e, "llama")
	m := New(e, prometheus.NewRegistry())
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	g := newGate(t, e, &m.obs)

	c := cases[0]
	var experts []string
	for _, r := range e.Routers() {
		if r.Name == c.Adapter {
			experts = slices.Sorted(slices.Values(r.Experts))
		}
	}
	if len(experts) < 2 {
		t.Fatalf("router %q has experts %v", c.Adapter, experts)
	}
	ctx := context.Background()
	s, err := e.Generate(ctx, serve.Request{Model: c.Adapter, Prompt: c.Prompt,
		Params: serve.SamplingParams{MaxTokens: 4, IgnoreEOS: true}})
	if err != nil {
		t.Fatal(err)
	}
	g.wait(t) // step 1: the routed request prefills
	g.next(t) // step 2: the snapshot after step 1 shows it running
	mfs := scrape(t, srv.URL)
	g.open()
	l := labelsOf(mfs[nameLoRAInfo].GetMetric()[0])
	if l[labelRunning] != strings.Join(experts, ",") || l[labelWaiting] != "" {
		t.Errorf("%s labels %v, want running %v (router %q's experts)", nameLoRAInfo, l, experts, c.Adapter)
	}
	if _, err := s.Collect(ctx); err != nil {
		t.Fatal(err)
	}
}
