package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loraplex/loraplex/model"
)

func state(running, waiting string, loaded map[string]string) ReplicaState {
	s := ReplicaState{Running: map[string]bool{}, Waiting: map[string]bool{}, Loaded: loaded}
	addNames(s.Running, running)
	addNames(s.Waiting, waiting)
	if s.Loaded == nil {
		s.Loaded = map[string]string{}
	}
	return s
}

// An adapter goes to the replica in its best affinity tier (running or on the device, then
// waiting for a load, then in host memory), the least loaded among equals; an adapter no
// replica holds, and the base model, go to the least loaded replica.
func TestAffinePicksTheReplicaThatHoldsTheAdapter(t *testing.T) {
	states := []ReplicaState{
		state("a", "w", map[string]string{"a": "gpu", "g": "gpu", "h": "cpu"}),
		state("", "", map[string]string{"h2": "cpu", "w": "cpu"}),
		state("b", "w", map[string]string{"b": "gpu", "w2": "cpu", "h2": "cpu"}),
	}
	for _, tc := range []struct {
		name     string
		inFlight []int
		model    string
		want     int
	}{
		{"running beats an idle replica", []int{5, 0, 0}, "a", 0},
		{"on the device without requests is active", []int{5, 0, 0}, "g", 0},
		{"waiting: the least loaded of the two loading it", []int{3, 0, 1}, "w", 2},
		{"waiting beats host memory", []int{4, 0, 4}, "w", 0},
		{"host memory beats nothing", []int{0, 0, 4}, "h", 0},
		{"host memory: the least loaded holder", []int{0, 3, 2}, "h2", 2},
		{"nobody holds it: least loaded", []int{2, 1, 3}, "new", 1},
		{"the base model: least loaded, never affine", []int{2, 4, 1}, "base", 2},
	} {
		a := NewAffine(3, 0, "base")
		for i, s := range states {
			a.Observe(i, s)
		}
		copy(a.inFlight, tc.inFlight)
		if got := a.Pick(tc.model); got != tc.want {
			t.Errorf("%s: picked %d, want %d", tc.name, got, tc.want)
		}
		if a.inFlight[tc.want] != tc.inFlight[tc.want]+1 {
			t.Errorf("%s: the pick was not counted in flight: %v", tc.name, a.inFlight)
		}
	}
}

// Without a bound on imbalance, an adapter held only in host memory goes to its holder even
// when that replica is the busiest: a disk load costs more than a queue.
func TestAffineHostTierOverLoad(t *testing.T) {
	a := NewAffine(2, 0, "base")
	a.Observe(0, state("", "", nil))
	a.Observe(1, state("", "", map[string]string{"x": "cpu"}))
	copy(a.inFlight, []int{0, 6})
	if got := a.Pick("x"); got != 1 {
		t.Errorf("picked %d, want the replica holding x in host memory", got)
	}
}

// Affinity gives way to balance past the slack: a replica more than Slack requests busier
// than the least loaded is passed over, and Done gives the request's slot back.
func TestAffineSlackBoundsImbalance(t *testing.T) {
	a := NewAffine(2, 2, "base")
	a.Observe(0, state("hot", "", map[string]string{"hot": "gpu"}))
	a.Observe(1, state("", "", nil))
	var picks []int
	for range 5 {
		picks = append(picks, a.Pick("hot"))
	}
	// 0,0,0 (in flight 3 vs 0 is past the slack of 2), then 1, then 0 again (3 vs 1).
	if want := []int{0, 0, 0, 1, 0}; !equalInts(picks, want) {
		t.Errorf("picks %v, want %v", picks, want)
	}
	for _, i := range picks {
		a.Done(i)
	}
	if a.inFlight[0] != 0 || a.inFlight[1] != 0 {
		t.Errorf("in flight after every Done: %v", a.inFlight)
	}
}

// Among equally loaded replicas a new adapter goes to the one holding fewest adapters, and
// with nothing to tell them apart the picks take turns rather than piling on one replica.
func TestAffineSpreadsNewAdapters(t *testing.T) {
	a := NewAffine(3, 0, "base")
	a.Observe(0, state("", "", map[string]string{"x": "gpu", "y": "cpu"}))
	a.Observe(1, state("", "", map[string]string{"z": "gpu"}))
	a.Observe(2, state("", "", map[string]string{"v": "cpu", "w": "cpu"}))
	if got := a.Pick("new"); got != 1 {
		t.Errorf("picked %d, want 1 (fewest adapters)", got)
	}
	b := NewAffine(2, 0, "base")
	seen := map[int]bool{}
	for range 2 {
		i := b.Pick("new")
		seen[i] = true
		b.Done(i)
	}
	if len(seen) != 2 {
		t.Errorf("two picks on idle, empty replicas went to %v", seen)
	}
}

// Round robin cycles through the replicas whatever the request names.
func TestRoundRobinCycles(t *testing.T) {
	r := NewRoundRobin(3)
	var picks []int
	for _, m := range []string{"a", "a", "a", "b", "a"} {
		picks = append(picks, r.Pick(m))
	}
	if want := []int{0, 1, 2, 0, 1}; !equalInts(picks, want) {
		t.Errorf("picks %v, want %v", picks, want)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The newest vllm:lora_requests_info series (by its value, the creation time) gives the running
// and waiting sets; vllm:lora_adapter_loaded lists the resident adapters by level; a malformed
// exposition is an error, not half a state.
func TestParseReplicaState(t *testing.T) {
	text := `# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="old",waiting_lora_adapters=""} 100
vllm:lora_requests_info{max_lora="4",running_lora_adapters="a,b",waiting_lora_adapters="c"} 200
# TYPE vllm:lora_adapter_loaded gauge
vllm:lora_adapter_loaded{adapter_name="a",level="gpu",pinned="false",rank="8"} 1
vllm:lora_adapter_loaded{adapter_name="h",level="cpu",pinned="false",rank="8"} 1
# TYPE loraplex_adapter_cache_transfers_total counter
loraplex_adapter_cache_transfers_total{model_name="m",result="ok",stage="host_to_device"} 7
loraplex_adapter_cache_transfers_total{model_name="m",result="error",stage="host_to_device"} 2
loraplex_adapter_cache_transfers_total{model_name="m",result="ok",stage="disk_to_host"} 5
`
	s, err := ParseReplicaState(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Running["a"] || !s.Running["b"] || s.Running["old"] || !s.Waiting["c"] || len(s.Waiting) != 1 || s.MaxLoRA != 4 {
		t.Errorf("sets: running %v waiting %v max %d", s.Running, s.Waiting, s.MaxLoRA)
	}
	if s.Loaded["a"] != "gpu" || s.Loaded["h"] != "cpu" || len(s.Loaded) != 2 {
		t.Errorf("loaded: %v", s.Loaded)
	}
	if s.DeviceLoads != 7 || s.DiskLoads != 5 {
		t.Errorf("loads: device %v disk %v", s.DeviceLoads, s.DiskLoads)
	}
	if _, err := ParseReplicaState(strings.NewReader("vllm:lora_requests_info{max_lora=\"4\" 1\n")); err == nil {
		t.Error("a malformed exposition parsed")
	}
}

func FuzzParseReplicaState(f *testing.F) {
	f.Add(`vllm:lora_requests_info{max_lora="4",running_lora_adapters="a,b",waiting_lora_adapters="c"} 200` + "\n")
	f.Add(`vllm:lora_adapter_loaded{adapter_name="a",level="gpu"} 1` + "\n" + `vllm:lora_adapter_loaded{adapter_name="a",level="cpu"} 1` + "\n")
	f.Add("# TYPE x counter\nx 1\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, text string) {
		s, err := ParseReplicaState(strings.NewReader(text))
		if err != nil {
			return
		}
		for _, set := range []map[string]bool{s.Running, s.Waiting} {
			for n := range set {
				if n == "" || strings.Contains(n, ",") {
					t.Errorf("adapter name %q in a set", n)
				}
			}
		}
		for n := range s.Loaded {
			if n == "" {
				t.Error("empty adapter name loaded")
			}
		}
	})
}

// Against two real replicas (engine, OpenAI gateway and /metrics on loopback, adapters loaded
// on demand from disk), the affine router sends every request for an adapter to the replica
// whose metrics show it (replica 1 holds adapter-01, replica 0 adapter-00, each from one
// request sent straight there), where round robin splits each adapter over both; the
// replicas' counters show the loads each run caused.
func TestRoutedAgainstRealReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	var clients []*Client
	for range 2 {
		l, err := StartLocal(LocalConfig{Threads: 1, MaxNumSeqs: 4, MaxLoRAs: 2, Adapters: 2, Rank: 4,
			Targets: []model.Proj{model.ProjQ, model.ProjV}, Seed: 1, Metrics: true})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		c := NewClient(l.URL, 30*time.Second, 0)
		defer c.Close()
		clients = append(clients, c)
	}
	// Adapters 0,0,1,1,...: round robin sends each adapter to both replicas; requests are
	// spaced so each one's load shows in a scrape before the next arrives.
	var plan []Planned
	for k := range 8 {
		plan = append(plan, Planned{At: time.Duration(k) * 150 * time.Millisecond, Adapter: k / 2 % 2,
			PromptIDs: []int{5, 6, 7, 8}, PromptLen: 4, MaxTokens: 3})
	}
	names := []string{"adapter-00", "adapter-01"}
	modelOf := func(p *Planned) string { return names[p.Adapter] }
	for i, c := range clients {
		if res := c.Complete(context.Background(), names[i], &plan[0]); res.Status != "" {
			t.Fatalf("placing %s on replica %d: %s", names[i], i, res.Status)
		}
	}
	for _, route := range []string{"affine", "round-robin"} {
		var r Router = NewRoundRobin(2)
		if route == "affine" {
			r = NewAffine(2, 0, "loraplex-demo")
		}
		rs, _, _, rep, err := runRouted(context.Background(), clients, route, r, 20*time.Millisecond, plan, modelOf)
		if err != nil {
			t.Fatal(err)
		}
		where := map[string]map[int]bool{}
		for _, res := range rs {
			if res.Status != "" {
				t.Fatalf("%s: request failed: %s", route, res.Status)
			}
			if where[res.Model] == nil {
				where[res.Model] = map[int]bool{}
			}
			where[res.Model][res.Replica] = true
		}
		for m, reps := range where {
			if route == "affine" && (len(reps) != 1 || !reps[slices.Index(names, m)]) {
				t.Errorf("affine: %s went to replicas %v", m, reps)
			}
			if route == "round-robin" && len(reps) != 2 {
				t.Errorf("round robin: %s went to replicas %v", m, reps)
			}
		}
		total := 0
		for _, p := range rep.PerReplica {
			total += p.Requests
		}
		if total != len(plan) || route == "affine" && rep.DeviceLoads != 0 {
			t.Errorf("%s: report %+v", route, rep)
		}
		t.Logf("%s: %+v", route, rep)
	}
}
