package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	pmodel "github.com/prometheus/common/model"
)

// maxScrape bounds one /metrics body: a replica's exposition is a few hundred series (one
// vllm:lora_adapter_loaded series per resident adapter), far below this.
const maxScrape = 8 << 20

// ReplicaState is what one scrape of a replica's /metrics says, reduced to what an
// adapter-affine router reads: the running and waiting adapter sets of the newest
// vllm:lora_requests_info series (the series' value is its creation time; llm-d's extractor
// reads the newest the same way), the adapters vllm:lora_adapter_loaded lists with their level
// ("gpu" or "cpu"), and the adapter moves loraplex counts, for the loads-per-minute figures.
type ReplicaState struct {
	Running, Waiting map[string]bool
	Loaded           map[string]string // adapter -> level
	MaxLoRA          int
	DeviceLoads      float64 // loraplex_adapter_cache_transfers_total{stage="host_to_device",result="ok"}
	DiskLoads        float64 // loraplex_adapter_cache_transfers_total{stage="disk_to_host",result="ok"}
}

// ParseReplicaState reads a Prometheus text exposition. Families it does not need are ignored;
// a malformed exposition is an error (a router must not act on half a scrape).
func ParseReplicaState(r io.Reader) (ReplicaState, error) {
	p := expfmt.NewTextParser(pmodel.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return ReplicaState{}, err
	}
	st := ReplicaState{Running: map[string]bool{}, Waiting: map[string]bool{}, Loaded: map[string]string{}}
	if f := fams["vllm:lora_requests_info"]; f != nil {
		var newest *dto.Metric
		for _, m := range f.GetMetric() {
			if newest == nil || value(m) > value(newest) {
				newest = m
			}
		}
		if newest != nil {
			for _, l := range newest.GetLabel() {
				switch l.GetName() {
				case "running_lora_adapters":
					addNames(st.Running, l.GetValue())
				case "waiting_lora_adapters":
					addNames(st.Waiting, l.GetValue())
				case "max_lora":
					fmt.Sscan(l.GetValue(), &st.MaxLoRA)
				}
			}
		}
	}
	if f := fams["vllm:lora_adapter_loaded"]; f != nil {
		for _, m := range f.GetMetric() {
			if value(m) <= 0 {
				continue
			}
			name, level := label(m, "adapter_name"), label(m, "level")
			if name != "" && (st.Loaded[name] != "gpu") { // the best level wins if listed twice
				st.Loaded[name] = level
			}
		}
	}
	if f := fams["loraplex_adapter_cache_transfers_total"]; f != nil {
		for _, m := range f.GetMetric() {
			if label(m, "result") != "ok" {
				continue
			}
			switch label(m, "stage") {
			case "host_to_device":
				st.DeviceLoads += value(m)
			case "disk_to_host":
				st.DiskLoads += value(m)
			}
		}
	}
	return st, nil
}

func addNames(set map[string]bool, csv string) {
	for _, n := range strings.Split(csv, ",") {
		if n = strings.TrimSpace(n); n != "" {
			set[n] = true
		}
	}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

// Scrape fetches and parses url's /metrics.
func (c *Client) Scrape(ctx context.Context) (ReplicaState, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/metrics", nil)
	if err != nil {
		return ReplicaState{}, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return ReplicaState{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ReplicaState{}, fmt.Errorf("GET %s/metrics: HTTP %d", c.base, resp.StatusCode)
	}
	st, err := ParseReplicaState(io.LimitReader(resp.Body, maxScrape))
	if err != nil {
		return ReplicaState{}, fmt.Errorf("GET %s/metrics: %w", c.base, err)
	}
	return st, nil
}

// Affinity tiers of a replica for one adapter, best last. A replica running the adapter or
// holding it in a device slot serves it at once; one where it waits is already loading it (a
// second request there shares that load); one holding it in host memory loads it without the
// disk; elsewhere it costs a load from disk.
const (
	tierNone = iota
	tierHost
	tierWaiting
	tierActive
)

func (s *ReplicaState) tier(adapter string) int {
	switch {
	case s.Running[adapter] || s.Loaded[adapter] == "gpu":
		return tierActive
	case s.Waiting[adapter]:
		return tierWaiting
	case s.Loaded[adapter] != "":
		return tierHost
	}
	return tierNone
}

// Router sends each request of a multi-replica run to one replica.
type Router interface {
	// Pick chooses the replica for a request naming model and counts it in flight there.
	Pick(model string) int
	// Done says a request picked for replica i has finished.
	Done(i int)
}

// RoundRobin ignores the request and cycles through the replicas.
type RoundRobin struct {
	mu   sync.Mutex
	n, i int
}

func NewRoundRobin(n int) *RoundRobin { return &RoundRobin{n: n} }

func (r *RoundRobin) Pick(string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := r.i
	r.i = (r.i + 1) % r.n
	return i
}

func (r *RoundRobin) Done(int) {}

// Affine is the adapter-affinity rule of llm-d's endpoint picker, on the same signals: a
// request goes to the replica in the best affinity tier for its adapter (as the last scrape
// saw it: running or on the device, then waiting, then in host memory), the least loaded of
// those; with no replica holding the adapter, or for the base model, to the least loaded
// replica (among equals, the one holding fewest adapters). Load is the requests this generator has in flight there, which is exact, where a
// scrape of vllm:num_requests_* would lag. Slack bounds the imbalance affinity may cause: a
// replica more than Slack requests busier than the least loaded one is passed over (the EPP's
// queue filters do the same), so a hot adapter cannot pile up on one replica. Slack 0 means
// no bound.
type Affine struct {
	mu       sync.Mutex
	states   []ReplicaState
	inFlight []int
	Slack    int
	base     string
	turn     int
}

// NewAffine routes over n replicas; base is the base model's name (never affine).
func NewAffine(n, slack int, base string) *Affine {
	return &Affine{states: make([]ReplicaState, n), inFlight: make([]int, n), Slack: slack, base: base}
}

// Observe records replica i's latest scrape.
func (a *Affine) Observe(i int, s ReplicaState) {
	a.mu.Lock()
	a.states[i] = s
	a.mu.Unlock()
}

func (a *Affine) Pick(model string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	// The least loaded replica; among equals the one holding fewest adapters (so adapters no
	// replica holds spread out and each replica's slots keep a share of them, rather than the
	// first replica collecting every new adapter while the load is light), then the next in
	// turn (the EPP breaks ties at random).
	a.turn++
	least := -1
	for k := range a.inFlight {
		i := (a.turn + k) % len(a.inFlight)
		if least < 0 || a.inFlight[i] < a.inFlight[least] ||
			a.inFlight[i] == a.inFlight[least] && len(a.states[i].Loaded) < len(a.states[least].Loaded) {
			least = i
		}
	}
	best, bestTier := least, tierNone
	if model != a.base {
		for i := range a.states {
			if a.Slack > 0 && a.inFlight[i] > a.inFlight[least]+a.Slack {
				continue
			}
			t := a.states[i].tier(model)
			if t > bestTier || (t == bestTier && t > tierNone && a.inFlight[i] < a.inFlight[best]) {
				best, bestTier = i, t
			}
		}
	}
	a.inFlight[best]++
	return best
}

func (a *Affine) Done(i int) {
	a.mu.Lock()
	a.inFlight[i]--
	a.mu.Unlock()
}

// watch scrapes every replica each interval and hands each state to observe until ctx ends.
// A failed scrape is skipped, so a router keeps its last view of an endpoint it cannot reach
// for a moment.
func watch(ctx context.Context, clients []*Client, observe func(int, ReplicaState), interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for i, c := range clients {
			if s, err := c.Scrape(ctx); err == nil {
				observe(i, s)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
