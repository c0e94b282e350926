package main

import (
	"math"
	"math/rand/v2"
	"testing"
)

func histogram(t *testing.T, kind string, n int, s float64, draws int) []float64 {
	t.Helper()
	p, err := NewPicker(kind, n, s)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	h := make([]float64, n)
	for range draws {
		i := p.Pick(rng)
		if i < 0 || i >= n {
			t.Fatalf("%s picked %d of %d", kind, i, n)
		}
		h[i]++
	}
	for i := range h {
		h[i] /= float64(draws)
	}
	return h
}

func TestIdentical(t *testing.T) {
	if h := histogram(t, "identical", 8, 0, 1000); h[0] != 1 {
		t.Errorf("identical: %v", h)
	}
}

func TestUniform(t *testing.T) {
	for i, f := range histogram(t, "uniform", 8, 0, 80000) {
		if math.Abs(f-0.125) > 0.01 {
			t.Errorf("uniform: adapter %d has share %v", i, f)
		}
	}
}

func TestZipf(t *testing.T) {
	for _, s := range []float64{0.8, 1, 1.5} {
		h := histogram(t, "zipf", 16, s, 200000)
		norm := 0.0
		for k := range 16 {
			norm += math.Pow(float64(k+1), -s)
		}
		for k, f := range h {
			want := math.Pow(float64(k+1), -s) / norm
			if math.Abs(f-want) > 0.01 {
				t.Errorf("zipf s=%v: adapter %d share %v, want %v", s, k, f, want)
			}
		}
	}
}

func TestPickerErrors(t *testing.T) {
	for _, tc := range []struct {
		kind string
		n    int
		s    float64
	}{{"zipf", 4, 0}, {"zipf", 4, -1}, {"pareto", 4, 1}, {"uniform", 0, 1}} {
		if _, err := NewPicker(tc.kind, tc.n, tc.s); err == nil {
			t.Errorf("NewPicker(%q, %d, %v) accepted", tc.kind, tc.n, tc.s)
		}
	}
}
