package model

import (
	"math"
	"testing"
)

func sm(v ...float64) []float64 {
	m := math.Inf(-1)
	for _, x := range v {
		m = max(m, x)
	}
	var s float64
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = math.Exp(x - m)
		s += out[i]
	}
	for i := range out {
		out[i] /= s
	}
	return out
}

// Route is the gate math of the routers (router/), which the forward pass runs: top-k with
// ties to the lower index, softmax(l[I]/T), null experts dropped and the rest renormalised.
func TestRoute(t *testing.T) {
	e := sm(3, 2)          // top-2 of [1 3 2 0] at T = 1
	eT := sm(3/0.5, 2/0.5) // same at T = 0.5
	eN := sm(5, 3)         // [null?] see "null experts"
	e3 := sm(4, 3, 2.5)    // top-3 with a null in the middle
	r3 := e3[0] + e3[2]    // renormalisation over the real ones
	tests := []struct {
		name   string
		logits []float32
		k      int
		T      float32
		nulls  int
		want   []Choice
	}{
		{"top-2", []float32{1, 3, 2, 0}, 2, 1, 0, []Choice{{Expert: 1, Weight: float32(e[0])}, {Expert: 2, Weight: float32(e[1])}}},
		{"top-1 weight 1", []float32{1, 3, 2, 0}, 1, 1, 0, []Choice{{Expert: 1, Weight: 1}}},
		{"top-1 ignores temperature", []float32{1, 3, 2, 0}, 1, 0.01, 0, []Choice{{Expert: 1, Weight: 1}}},
		{"temperature", []float32{1, 3, 2, 0}, 2, 0.5, 0, []Choice{{Expert: 1, Weight: float32(eT[0])}, {Expert: 2, Weight: float32(eT[1])}}},
		{"high temperature flattens", []float32{1, 3, 2, 0}, 2, 1e6, 0, []Choice{{Expert: 1, Weight: 0.5}, {Expert: 2, Weight: 0.5}}},
		{"ties go to the lower index", []float32{2, 5, 2, 5}, 2, 1, 0, []Choice{{Expert: 1, Weight: 0.5}, {Expert: 3, Weight: 0.5}}},
		{"tie for the last slot", []float32{0, 7, 1, 1}, 2, 1, 0, []Choice{{Expert: 1, Weight: float32(sm(7, 1)[0])}, {Expert: 2, Weight: float32(sm(7, 1)[1])}}},
		{"all equal", []float32{1, 1, 1}, 1, 1, 0, []Choice{{Expert: 0, Weight: 1}}},
		// rows 0..1 real, 2..3 null: top-2 = {3 (null), 1}: the real one gets weight 1.
		{"null experts renormalise", []float32{0, 3, 1, 5}, 2, 1, 2, []Choice{{Expert: 1, Weight: 1}}},
		// top-3 = {0, 2 (null), 1}: weights e3[0], e3[2] renormalised.
		{"null in the middle", []float32{4, 2.5, 3}, 3, 1, 1, []Choice{{Expert: 0, Weight: float32(e3[0] / r3)}, {Expert: 1, Weight: float32(e3[2] / r3)}}},
		{"all null: no delta", []float32{0, 1, 5, 3}, 2, 1, 2, []Choice{}},
		{"k = 1 picks a null: no delta", []float32{0, 1, 5}, 1, 1, 1, []Choice{}},
		{"k clamped", []float32{1, 2}, 5, 1, 0, []Choice{{Expert: 1, Weight: float32(sm(2, 1)[0])}, {Expert: 0, Weight: float32(sm(2, 1)[1])}}},
		{"NaN ranks last", []float32{float32(math.NaN()), 1, 0}, 2, 1, 0, []Choice{{Expert: 1, Weight: float32(sm(1, 0)[0])}, {Expert: 2, Weight: float32(sm(1, 0)[1])}}},
		{"top-2 with nulls not chosen", []float32{5, 3, 0, 1}, 2, 1, 2, []Choice{{Expert: 0, Weight: float32(eN[0])}, {Expert: 1, Weight: float32(eN[1])}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Route(tc.logits, tc.k, tc.T, tc.nulls, nil)
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			var sum float32
			for i := range got {
				sum += got[i].Weight
				if got[i].Expert != tc.want[i].Expert || math.Abs(float64(got[i].Weight-tc.want[i].Weight)) > 1e-6 {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
			if len(got) > 0 && math.Abs(float64(sum-1)) > 1e-6 {
				t.Fatalf("weights sum to %v", sum)
			}
		})
	}
}

// Route reuses its output slice and allocates nothing per token.
func TestRouteReusesOut(t *testing.T) {
	buf := make([]Choice, 0, 4)
	got := Route([]float32{1, 2, 3}, 2, 1, 0, buf)
	if &got[0] != &buf[:1][0] {
		t.Fatal("Route did not reuse out")
	}
	if n := testing.AllocsPerRun(100, func() { got = Route([]float32{1, 2, 3, 4, 5}, 2, 1, 1, got) }); n != 0 {
		t.Fatalf("Route allocates %v times", n)
	}
}
