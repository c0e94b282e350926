package main

import (
	"math"
	"slices"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	for _, tc := range []struct {
		name string
		xs   []float64
		p    float64
		want float64
	}{
		{"single", []float64{7}, 99, 7},
		{"median odd", []float64{3, 1, 2}, 50, 2},
		{"median even interpolates", []float64{4, 1, 3, 2}, 50, 2.5},
		{"min", []float64{5, 1, 9}, 0, 1},
		{"max", []float64{5, 1, 9}, 100, 9},
		{"p99 of 1..100", seq(100), 99, 99.01}, // numpy.percentile(range(1,101), 99)
		{"p90 of 1..10", seq(10), 90, 9.1},
		{"clamped above", []float64{1, 2}, 150, 2},
		{"clamped below", []float64{1, 2}, -5, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.xs, tc.p); math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("percentile(%v, %v) = %v, want %v", tc.xs, tc.p, got, tc.want)
			}
		})
	}
	if got := percentile(nil, 50); !math.IsNaN(got) {
		t.Errorf("percentile(nil) = %v, want NaN", got)
	}
}

func seq(n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = float64(i + 1)
	}
	return out
}

func TestSummarize(t *testing.T) {
	d := Summarize([]time.Duration{4 * time.Millisecond, time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond})
	want := Dist{N: 4, Mean: 2.5, P50: 2.5, P90: 3.7, P99: 3.97, Max: 4}
	if !near(d, want) {
		t.Errorf("Summarize = %+v, want %+v", d, want)
	}
	if d := Summarize(nil); d != (Dist{}) {
		t.Errorf("Summarize(nil) = %+v, want zero", d)
	}
}

func near(a, b Dist) bool {
	eq := func(x, y float64) bool { return math.Abs(x-y) < 1e-9 }
	return a.N == b.N && eq(a.Mean, b.Mean) && eq(a.P50, b.P50) && eq(a.P90, b.P90) && eq(a.P99, b.P99) && eq(a.Max, b.Max)
}

func TestSummarizeResults(t *testing.T) {
	ms := time.Millisecond
	rs := []Result{
		{TTFT: 10 * ms, ITL: []time.Duration{ms, 3 * ms}, E2E: 14 * ms, Tokens: 3, Chunks: 3, Expected: 3},
		{TTFT: 20 * ms, ITL: []time.Duration{2 * ms}, E2E: 22 * ms, Tokens: 2, Chunks: 1, Expected: 3},
		{Status: "HTTP 429"},
		{Status: "HTTP 429"},
		{Status: "timeout"},
	}
	s := summarize("x", rs, time.Second, 2*time.Second)
	if s.Requests != 5 || s.Completed != 2 || s.OutputTokens != 5 || s.ShortOutputs != 1 {
		t.Errorf("counts: %+v", s)
	}
	if s.Errors["HTTP 429"] != 2 || s.Errors["timeout"] != 1 || len(s.Errors) != 2 {
		t.Errorf("errors: %v", s.Errors)
	}
	if s.RequestRate != 1 || s.OutputTokRate != 2.5 || s.OfferedRate != 5 || s.TokensPerChunk != 1.25 {
		t.Errorf("rates: req %v tok %v offered %v per chunk %v", s.RequestRate, s.OutputTokRate, s.OfferedRate, s.TokensPerChunk)
	}
	if s.TTFT.N != 2 || s.TTFT.P50 != 15 || s.ITL.N != 3 || s.ITL.P50 != 2 || s.E2E.Max != 22 {
		t.Errorf("dists: ttft %+v itl %+v e2e %+v", s.TTFT, s.ITL, s.E2E)
	}
}

func TestParseRange(t *testing.T) {
	for in, want := range map[string]Range{"32": {32, 32}, "16:64": {16, 64}, " 8 : 8 ": {8, 8}} {
		if got, err := ParseRange(in); err != nil || got != want {
			t.Errorf("ParseRange(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "x", "5:4", "1:", "-3"} {
		if _, err := ParseRange(in); err == nil {
			t.Errorf("ParseRange(%q) accepted", in)
		}
	}
}

// percentile is percentileSorted of an unsorted sample, left as it was.
func percentile(xs []float64, p float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return percentileSorted(s, p)
}
