package main

import (
	"context"
	"testing"
	"time"

	"github.com/loraplex/loraplex/model"
)

// TestInProcess runs the whole path: demo model, generated adapters loaded on demand from the
// adapter dir, the OpenAI gateway on loopback, open-loop arrivals and the stream parser.
func TestInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	l, err := StartLocal(LocalConfig{Threads: 2, MaxNumSeqs: 8, Adapters: 4, Rank: 4,
		Targets: []model.Proj{model.ProjQ, model.ProjV, model.ProjDown}, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	picker, _ := NewPicker("uniform", len(l.Adapters), 0)
	wl := Workload{Rate: 20, Window: time.Second, Picker: picker, PromptLen: Range{4, 12},
		OutputLen: Range{3, 6}, TokenMax: 256, Seed: 5}
	plan := wl.Plan()
	if len(plan) < 8 {
		t.Fatalf("plan of %d requests for 20/s over 1 s", len(plan))
	}
	c := NewClient(l.URL, 30*time.Second, 0)
	defer c.Close()
	for _, ph := range []struct {
		name  string
		model func(*Planned) string
	}{
		{"base", func(*Planned) string { return l.Base }},
		{"adapters", func(p *Planned) string { return l.Adapters[p.Adapter] }},
	} {
		rs, window, wall := Run(context.Background(), c, plan, ph.model)
		s := summarize(ph.name, rs, window, wall)
		if s.Completed != len(plan) || len(s.Errors) != 0 || s.ShortOutputs != 0 {
			t.Fatalf("%s: %d/%d completed, errors %v, short %d", ph.name, s.Completed, len(plan), s.Errors, s.ShortOutputs)
		}
		want := 0
		for _, p := range plan {
			want += p.MaxTokens
		}
		if s.OutputTokens != want {
			t.Errorf("%s: %d output tokens, want %d", ph.name, s.OutputTokens, want)
		}
		if s.TTFT.N != len(plan) || !(s.TTFT.P50 > 0) || s.TTFT.P99 < s.TTFT.P50 || s.E2E.P50 < s.TTFT.P50 {
			t.Errorf("%s: implausible TTFT %+v / E2E %+v", ph.name, s.TTFT, s.E2E)
		}
		if s.ITL.N == 0 || s.ITL.P99 > s.E2E.Max {
			t.Errorf("%s: implausible ITL %+v", ph.name, s.ITL)
		}
		if s.RequestRate <= 0 || s.WallSeconds < window.Seconds() {
			t.Errorf("%s: throughput %v over %v s (window %v)", ph.name, s.RequestRate, s.WallSeconds, window)
		}
		for _, r := range rs {
			if r.Model != ph.model(&plan[0]) && ph.name == "base" {
				t.Errorf("base run sent model %q", r.Model)
			}
		}
	}
	// Every adapter the plan named was loaded on demand through the adapter dir, and -url
	// mode's discovery sees them as adapters of the base model.
	named := map[string]bool{}
	for _, p := range plan {
		named[l.Adapters[p.Adapter]] = true
	}
	base, listed, err := discover(context.Background(), c)
	if err != nil || base != l.Base || len(listed) != len(named) {
		t.Errorf("discover: base %q adapters %v, %v; want %q and the %d adapters used", base, listed, err, l.Base, len(named))
	}
	for _, a := range listed {
		if !named[a] {
			t.Errorf("discover listed %q, which no request named", a)
		}
	}
}
