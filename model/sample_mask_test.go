package model

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// A row with an allowed-token mask produces only allowed tokens, greedy or stochastic, and
// Sampler picks what SampleReference picks with the same logprobs; a row without a mask is
// unchanged by the field's existence.
func TestAllowedMaskRestrictsBothSamplers(t *testing.T) {
	const V = 300
	rng := rand.New(rand.NewPCG(5, 6))
	var s Sampler
	for trial := range 400 {
		logits := make([]float32, V)
		for i := range logits {
			logits[i] = float32(rng.NormFloat64() * 3)
		}
		mask := make([]uint64, (V+63)/64)
		var allowed []int
		for range 1 + rng.IntN(5) {
			id := rng.IntN(V)
			mask[id/64] |= 1 << (id % 64)
			allowed = append(allowed, id)
		}
		row := SampleRow{Temperature: float32(trial % 3), TopK: trial % 4, TopP: 0.9, U: rng.Float32(), Logprobs: 2, Allowed: mask}
		if err := CheckSampleRows([]SampleRow{row}, V); err != nil {
			t.Fatal(err)
		}
		var ref, got SampleResult
		SampleReference(slices.Clone(logits), &row, &ref)
		s.Sample(slices.Clone(logits), &row, &got)
		if !slices.Contains(allowed, int(got.Token)) {
			t.Fatalf("trial %d: sampled %d outside %v", trial, got.Token, allowed)
		}
		if ref.Token != got.Token || ref.Logprob != got.Logprob {
			t.Fatalf("trial %d: reference %d (%v), sampler %d (%v)", trial, ref.Token, ref.Logprob, got.Token, got.Logprob)
		}
	}
	bad := SampleRow{Allowed: make([]uint64, 2)}
	if err := CheckSampleRows([]SampleRow{bad}, V); err == nil {
		t.Error("a mask of the wrong length passed CheckSampleRows")
	}
}

// BenchmarkSamplerAllowed is one stochastic row of Llama 3's vocabulary sampled free and with
// a mask allowing 90% or 1% of the tokens: the mask's cost in the sampler itself.
func BenchmarkSamplerAllowed(b *testing.B) {
	const V = 128256
	rng := rand.New(rand.NewPCG(7, 8))
	logits := make([]float32, V)
	for i := range logits {
		logits[i] = float32(rng.NormFloat64() * 3)
	}
	for _, tc := range []struct {
		name    string
		allowed float64
	}{{"free", -1}, {"allow90", 0.9}, {"allow1", 0.01}} {
		b.Run(tc.name, func(b *testing.B) {
			row := SampleRow{Temperature: 1, TopP: 0.9, U: 0.5}
			if tc.allowed >= 0 {
				row.Allowed = make([]uint64, (V+63)/64)
				for i := range V {
					if rng.Float64() < tc.allowed {
						row.Allowed[i/64] |= 1 << (i % 64)
					}
				}
			}
			var s Sampler
			var out SampleResult
			work := make([]float32, V)
			for b.Loop() {
				copy(work, logits)
				s.Sample(work, &row, &out)
			}
		})
	}
}
