package metrics

import (
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/serve"
	"github.com/prometheus/client_golang/prometheus"
)

// stateCollector turns the engine's atomics into metrics at scrape time. Reading them costs
// the scheduler loop nothing: the loop stores them once per iteration whether or not anyone
// scrapes, and a scrape holds no lock the loop waits on for long (Models takes the adapter
// registry's mutex, which the loop never does; Models and Routers take the router registry's
// mutex just to copy its entries, which the loop takes only when a routed request ends; the
// router selection counters are atomics).
type stateCollector struct {
	m *Metrics

	running, waiting, kvUsage   *prometheus.Desc
	preemptions, prompt, gen    *prometheus.Desc
	success, loraInfo, resident *prometheus.Desc
	cacheEvents, cacheBytes     *prometheus.Desc
	transfers, transferSeconds  *prometheus.Desc
	routers, routerSelections   *prometheus.Desc
	loraLoaded, gpuLoaded       *prometheus.Desc
	cpuLoaded, maxGPU           *prometheus.Desc
}

func newStateCollector(m *Metrics) *stateCollector {
	vllm := prometheus.Labels{labelModel: m.base, labelEngine: engineIndex}
	d := func(name, help string, variable []string, l prometheus.Labels) *prometheus.Desc {
		return prometheus.NewDesc(name, help, variable, l)
	}
	return &stateCollector{
		m:           m,
		running:     d(nameRunning, "Number of requests in model execution batches.", nil, vllm),
		waiting:     d(nameWaiting, "Number of requests waiting to be processed.", nil, vllm),
		kvUsage:     d(nameKVUsage, "KV-cache usage. 1 means 100 percent usage.", nil, vllm),
		preemptions: d(namePreemptions, "Cumulative number of preemption from the engine.", nil, vllm),
		prompt:      d(namePromptToks, "Number of prefill tokens processed.", nil, vllm),
		gen:         d(nameGenToks, "Number of generation tokens processed.", nil, vllm),
		success:     d(nameSuccess, "Count of successfully processed requests.", []string{labelReason}, vllm),
		// vLLM gives this gauge no model_name or engine label; routers match it by name alone.
		loraInfo: d(nameLoRAInfo, "Running stats on lora requests.", []string{labelMaxLoRA, labelWaiting, labelRunning}, nil),
		resident: d(nameResident, "Adapters resident per cache tier.", []string{labelTier}, prometheus.Labels{labelModel: m.base}),
		cacheEvents: d(nameCacheEvents, "Adapter cache lookups by where the adapter was found (device_hit, host_hit, miss) and evictions per tier.",
			[]string{"event"}, prometheus.Labels{labelModel: m.base}),
		cacheBytes: d(nameCacheBytes, "Adapter tensor bytes per cache tier.", []string{labelTier}, prometheus.Labels{labelModel: m.base}),
		transfers: d(nameTransfers, "Adapter moves between tiers by stage (disk_to_host, host_to_device) and result (ok, error).",
			[]string{"stage", "result"}, prometheus.Labels{labelModel: m.base}),
		transferSeconds: d(nameTransferSeconds, "Seconds spent moving adapters between tiers, by stage.", []string{"stage"}, prometheus.Labels{labelModel: m.base}),
		loraLoaded: d(nameLoRALoaded, "1 for each resident LoRA adapter, at its best tier: level=gpu in a device slot (no load before use), level=cpu in host memory only (an upload before use). Absent: on disk only, loading, or failed.",
			[]string{labelAdapterName, labelLevel, labelPinned, labelRank}, vllm),
		gpuLoaded: d(nameGPULoaded, "LoRA adapters resident in device slots.", nil, vllm),
		cpuLoaded: d(nameCPULoaded, "LoRA adapters resident in host memory or on the device (like vLLM's CPU cache, it includes the device-resident ones).", nil, vllm),
		maxGPU:    d(nameMaxGPU, "Device slots for LoRA adapters (--max-loras).", nil, vllm),
		routers:   d(nameRouters, "Routers (mixtures of LoRA experts) loaded.", nil, prometheus.Labels{labelModel: m.base}),
		routerSelections: d(nameRouterSelect, "Generated tokens of requests naming a router whose top-1 expert in that layer was that expert (layer is the decoder layer index).",
			[]string{labelRouter, labelExpert, labelLayer}, prometheus.Labels{labelModel: m.base}),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.running, c.waiting, c.kvUsage, c.preemptions, c.prompt, c.gen, c.success, c.loraInfo, c.resident, c.cacheEvents, c.cacheBytes, c.transfers, c.transferSeconds, c.routers, c.routerSelections, c.loraLoaded, c.gpuLoaded, c.cpuLoaded, c.maxGPU} {
		ch <- d
	}
}

func (c *stateCollector) collect(ch chan<- prometheus.Metric, models []serve.ModelInfo, info serve.LoRAInfo) {
	st := c.m.e.Stats()
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	counter := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, lv...)
	}
	gauge(c.running, float64(st.Running.Load()))
	gauge(c.waiting, float64(st.Waiting.Load()))
	gauge(c.kvUsage, kvUsage(st.KVPagesUsed.Load(), st.KVPages.Load()))
	counter(c.preemptions, float64(st.Preemptions.Load()))
	counter(c.prompt, float64(st.PromptTokens.Load()))
	counter(c.gen, float64(st.GenerationTokens.Load()))

	var finished [len(reasons)]int64
	st.Finished.Range(func(k, v any) bool {
		r, _ := k.(string)
		if n, ok := v.(*atomic.Int64); ok {
			finished[reasonIndex(r)] += n.Load()
		}
		return true
	})
	for i, r := range reasons {
		counter(c.success, float64(finished[i]), r)
	}

	// One series only: the label set is computed from the current snapshot at each scrape, so
	// a change of adapters replaces the old series instead of leaving it behind (vLLM keeps
	// stale label sets, and routers have to pick the one with the newest timestamp value).
	at := info.At
	if at.IsZero() {
		at = c.m.created // no request yet: the snapshot is as old as the exporter
	}
	gauge(c.loraInfo, float64(at.UnixNano())/1e9,
		strconv.Itoa(info.MaxLoRAs), strings.Join(info.Waiting, ","), strings.Join(info.Running, ","))

	// Residency per tier and cache events come from the engine's adapter cache.
	c.residency(ch)
	cs := c.m.e.AdapterCache().Stats()
	gauge(c.resident, float64(cs.DeviceSlots), "device")
	gauge(c.resident, float64(cs.HostAdapters), "host")
	for _, ev := range []struct {
		name string
		n    uint64
	}{{"device_hit", cs.DeviceHits}, {"host_hit", cs.HostHits}, {"miss", cs.Misses},
		{"device_eviction", cs.DeviceEvictions}, {"host_eviction", cs.HostEvictions}} {
		ch <- prometheus.MustNewConstMetric(c.cacheEvents, prometheus.CounterValue, float64(ev.n), ev.name)
	}
	gauge(c.cacheBytes, float64(cs.DeviceBytes), "device")
	gauge(c.cacheBytes, float64(cs.HostBytes), "host")
	for _, t := range []struct {
		stage, result string
		n             uint64
	}{{"disk_to_host", "ok", cs.Loads}, {"disk_to_host", "error", cs.LoadFailures},
		{"host_to_device", "ok", cs.Uploads}, {"host_to_device", "error", cs.UploadFailures}} {
		ch <- prometheus.MustNewConstMetric(c.transfers, prometheus.CounterValue, float64(t.n), t.stage, t.result)
	}
	ch <- prometheus.MustNewConstMetric(c.transferSeconds, prometheus.CounterValue, cs.LoadSeconds, "disk_to_host")
	ch <- prometheus.MustNewConstMetric(c.transferSeconds, prometheus.CounterValue, cs.UploadSeconds, "host_to_device")

	// Router selections: one series per loaded router, expert and layer (an unloaded router's
	// series vanish with it; a reloaded one starts from zero, which Prometheus reads as a reset).
	rs := c.m.e.Routers()
	gauge(c.routers, float64(len(rs)))
	for _, r := range rs {
		for l, counts := range r.Selections {
			layer := strconv.Itoa(l)
			for j, n := range counts {
				counter(c.routerSelections, float64(n), r.Name, r.Experts[j], layer)
			}
		}
	}
}

// residency exports each listed adapter's best tier. An adapter being uploaded still counts as
// host-resident: its device copy is not usable yet. loraplex never pins an adapter (every
// unleased copy is an eviction candidate), so pinned is always "false".
func (c *stateCollector) residency(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	gpu, cpu := 0, 0
	for _, a := range c.m.e.AdapterCache().List() {
		level := ""
		switch {
		case a.State == adaptercache.StateDevice:
			level = "gpu"
			gpu++
		case a.InHost:
			level = "cpu"
		default:
			continue
		}
		cpu++
		gauge(c.loraLoaded, 1, a.Name, level, "false", strconv.Itoa(a.Rank))
	}
	gauge(c.gpuLoaded, float64(gpu))
	gauge(c.cpuLoaded, float64(cpu))
	gauge(c.maxGPU, float64(c.m.e.Options().MaxLoRAs))
}

// kvUsage is used pages over pages, clamped to [0, 1]: the two atomics are read separately, so
// a scrape must not report a transient ratio outside the range routers expect.
func kvUsage(used, pages int64) float64 {
	if pages <= 0 || used <= 0 {
		return 0
	}
	return min(float64(used)/float64(pages), 1)
}
