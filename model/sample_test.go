package model_test

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// hostKept is vLLM's candidate set, computed the plain way: sort by (logit desc, id asc),
// top-k prefix, top-p prefix, min-p; probabilities in float64, normalised.
func hostKept(l []float32, row *model.SampleRow) map[int]float64 {
	ninf := float32(math.Inf(-1))
	var order []int
	for i, v := range l {
		if v != ninf {
			order = append(order, i)
		}
	}
	slices.SortFunc(order, func(a, b int) int {
		switch {
		case l[a] > l[b]:
			return -1
		case l[a] < l[b]:
			return 1
		}
		return a - b
	})
	if row.TopK > 0 && row.TopK < len(order) {
		order = order[:row.TopK]
	}
	inv := 1 / float64(row.Temperature)
	top := float64(l[order[0]])
	var probs []float64
	var sum float64
	for _, t := range order {
		e := math.Exp((float64(l[t]) - top) * inv)
		probs = append(probs, e)
		sum += e
	}
	if row.TopP > 0 && row.TopP < 1 {
		var cum float64
		for i, e := range probs {
			cum += e / sum
			if cum >= float64(row.TopP) {
				order, probs = order[:i+1], probs[:i+1]
				break
			}
		}
	}
	kept := map[int]float64{}
	sum = 0
	for i, e := range probs {
		if row.MinP <= 0 || e >= float64(row.MinP)*probs[0] {
			kept[order[i]] = e
			sum += e
		}
	}
	for t := range kept {
		kept[t] /= sum
	}
	return kept
}

func penalised(l []float32, row *model.SampleRow) []float32 {
	l = slices.Clone(l)
	for _, t := range row.Banned {
		if t >= 0 && int(t) < len(l) {
			l[t] = float32(math.Inf(-1))
		}
	}
	for _, b := range row.Bias {
		l[b.Token] += b.Bias
	}
	for _, h := range row.Hist {
		v := l[h.Token]
		if rp := row.RepetitionPenalty; rp != 0 && rp != 1 {
			if v > 0 {
				v /= rp
			} else {
				v *= rp
			}
		}
		if h.Count > 0 {
			v -= float32(row.FrequencyPenalty*float32(h.Count)) + row.PresencePenalty
		}
		l[h.Token] = v
	}
	return l
}

// TestSampleReferenceDistribution: sweeping U over a fine grid, the reference draws exactly
// vLLM's candidate set with its probabilities (to the grid's resolution), greedy rows
// pick the penalised argmax, and logprobs are the raw log-softmax.
func TestSampleReferenceDistribution(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const vocab, grid = 200, 8000
	rows := []model.SampleRow{
		{Temperature: 1},
		{Temperature: 0.7, TopK: 12},
		{Temperature: 1, TopK: 1},
		{Temperature: 1.3, TopP: 0.6},
		{Temperature: 1, MinP: 0.1},
		{Temperature: 0.9, TopK: 30, TopP: 0.85, MinP: 0.02, RepetitionPenalty: 1.3, FrequencyPenalty: 0.2, PresencePenalty: 0.5,
			Hist: []model.TokenCount{{Token: 3, Count: 0}, {Token: 7, Count: 2}, {Token: 11, Count: 1}}, Banned: []int32{0, 5, 500}},
	}
	for ri, row := range rows {
		for _, ties := range []bool{false, true} {
			raw := make([]float32, vocab)
			for i := range raw {
				v := r.NormFloat64() * 2
				if ties {
					v = math.Round(v*4) / 4
				}
				raw[i] = float32(v)
			}
			want := hostKept(penalised(raw, &row), &row)
			count := map[int]int{}
			var res model.SampleResult
			for g := 0; g < grid; g++ {
				rw := row
				rw.U = (float32(g) + 0.5) / grid
				rw.Logprobs = 3
				model.SampleReference(slices.Clone(raw), &rw, &res)
				count[int(res.Token)]++
			}
			for tok, n := range count {
				p, ok := want[tok]
				if !ok {
					t.Fatalf("row %d ties %v: drew token %d outside the CPU sampler's candidates", ri, ties, tok)
				}
				if got := float64(n) / grid; math.Abs(got-p) > 2.0/grid+1e-4 {
					t.Errorf("row %d ties %v: token %d drawn with frequency %.5f, probability %.5f", ri, ties, tok, got, p)
				}
			}
			for tok, p := range want {
				if count[tok] == 0 && p > 2.0/grid {
					t.Errorf("row %d ties %v: candidate %d (p %.5f) never drawn", ri, ties, tok, p)
				}
			}
			// Logprobs: raw log-softmax, top list ranked (value desc, id asc).
			mx := slices.Max(raw)
			var se float64
			for _, v := range raw {
				se += math.Exp(float64(v - mx))
			}
			lse := float64(mx) + math.Log(se)
			if d := math.Abs(float64(res.Logprob) - (float64(raw[res.Token]) - lse)); d > 1e-5 {
				t.Errorf("row %d: chosen logprob off by %g", ri, d)
			}
			order := make([]int, vocab)
			for i := range order {
				order[i] = i
			}
			slices.SortStableFunc(order, func(a, b int) int {
				switch {
				case raw[a] > raw[b]:
					return -1
				case raw[a] < raw[b]:
					return 1
				}
				return 0
			})
			for j, tl := range res.Top {
				if int(tl.Token) != order[j] {
					t.Errorf("row %d ties %v: top[%d] = %d, want %d", ri, ties, j, tl.Token, order[j])
				}
			}
		}
	}
	// Greedy: the first index of the penalised maximum.
	for i := 0; i < 50; i++ {
		raw := make([]float32, vocab)
		for j := range raw {
			raw[j] = float32(math.Round(r.NormFloat64() * 4))
		}
		row := model.SampleRow{Logprobs: -1, RepetitionPenalty: 1.5, FrequencyPenalty: 1, Hist: []model.TokenCount{{Token: int32(i), Count: 1}}, Banned: []int32{int32(i + 1)}}
		l := penalised(raw, &row)
		best := 0
		for j, v := range l {
			if v > l[best] {
				best = j
			}
		}
		var res model.SampleResult
		model.SampleReference(raw, &row, &res)
		if int(res.Token) != best {
			t.Fatalf("greedy picked %d, penalised argmax %d", res.Token, best)
		}
	}
}
