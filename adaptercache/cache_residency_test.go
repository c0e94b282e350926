package adaptercache

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Info reports an adapter's rank (the largest of its modules: r, or rank_pattern's largest) once
// it has been read, and the load observer hears every read from disk once, with its error,
// before the Acquire waiting for it returns.
func TestCacheRankAndLoadObserver(t *testing.T) {
	c, _ := newTestCache(t, Options{MaxDeviceSlots: 4})
	type load struct {
		name string
		ok   bool
	}
	var mu sync.Mutex
	var loads []load
	c.SetLoadObserver(func(name string, d time.Duration, err error) {
		mu.Lock()
		loads = append(loads, load{name, err == nil && d > 0})
		mu.Unlock()
	})
	registerFixtures(t, c)
	if err := c.Register("broken", filepath.Join(t.TempDir(), "missing")); err != nil {
		t.Fatal(err)
	}
	for _, n := range fixtureNames {
		if info, _ := c.State(n); info.Rank != 0 {
			t.Errorf("%s: rank %d before any load", n, info.Rank)
		}
		l, err := c.Acquire(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		l.Release()
		raw, err := os.ReadFile(filepath.Join(fixturePath(n), "adapter_config.json"))
		if err != nil {
			t.Fatal(err)
		}
		var conf struct {
			R           int            `json:"r"`
			RankPattern map[string]int `json:"rank_pattern"`
		}
		if err := json.Unmarshal(raw, &conf); err != nil {
			t.Fatal(err)
		}
		want := conf.R
		for _, r := range conf.RankPattern {
			want = max(want, r)
		}
		if info, _ := c.State(n); info.Rank != want {
			t.Errorf("%s: rank %d, adapter_config.json says %d", n, info.Rank, want)
		}
	}
	if _, err := c.Acquire(context.Background(), "broken"); err == nil {
		t.Fatal("a missing adapter loaded")
	}
	mu.Lock()
	defer mu.Unlock()
	want := []load{{"a_qv", true}, {"b_all_rslora", true}, {"c_patterns", true}, {"d_regex", true}, {"broken", false}}
	if len(loads) != len(want) {
		t.Fatalf("observed loads %v, want %v", loads, want)
	}
	for i := range want {
		if loads[i] != want[i] {
			t.Errorf("load %d: %v, want %v", i, loads[i], want[i])
		}
	}
}
