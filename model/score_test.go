package model_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// A scored row's logprob is the raw log-softmax of its token, its rank vLLM's (the tokens at
// least as likely, itself included), and its top list the sampler's for the same row.
func TestScoreReference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	for _, vocab := range []int{1, 7, 320} {
		for i := 0; i < 200; i++ {
			l := randomLogits(r, vocab)
			tok := int32(r.IntN(vocab))
			if math.IsInf(float64(l[tok]), -1) {
				continue
			}
			n := r.IntN(model.MaxSampleLogprobs + 1)
			var got model.ScoreResult
			model.ScoreReference(l, &model.ScoreRow{Token: tok, Logprobs: n}, &got)
			mx := math.Inf(-1)
			for _, v := range l {
				mx = max(mx, float64(v))
			}
			var se float64
			rank := 0
			for _, v := range l {
				se += math.Exp(float64(v) - mx)
				if v >= l[tok] {
					rank++
				}
			}
			want := float32(float64(l[tok]) - mx - math.Log(se))
			if math.Abs(float64(got.Logprob-want)) > 1e-5 || got.Rank != rank {
				t.Fatalf("vocab %d: logprob %v rank %d, want %v %d", vocab, got.Logprob, got.Rank, want, rank)
			}
			var s model.SampleResult
			model.SampleReference(append([]float32(nil), l...), &model.SampleRow{Logprobs: n}, &s)
			if len(s.Top) != len(got.Top) {
				t.Fatalf("top %d, sampler's %d", len(got.Top), len(s.Top))
			}
			for k := range s.Top {
				if s.Top[k] != got.Top[k] {
					t.Fatalf("top %d: %v, sampler's %v", k, got.Top[k], s.Top[k])
				}
			}
		}
	}
}

// A logit bias moves the choice (-100 bans in practice, +100 forces) but not the logprobs,
// which stay those of the raw logits.
func TestSampleReferenceLogitBias(t *testing.T) {
	l := []float32{3, 2, 1, 0}
	var plain model.SampleResult
	model.SampleReference(append([]float32(nil), l...), &model.SampleRow{Logprobs: 0}, &plain)
	for _, c := range []struct {
		bias model.TokenBias
		want int32
	}{{model.TokenBias{Token: 0, Bias: -100}, 1}, {model.TokenBias{Token: 3, Bias: 100}, 3}, {model.TokenBias{Token: 1, Bias: 0.5}, 0}} {
		var got, fast model.SampleResult
		row := model.SampleRow{Logprobs: 0, Bias: []model.TokenBias{c.bias}}
		model.SampleReference(append([]float32(nil), l...), &row, &got)
		var s model.Sampler
		s.Sample(append([]float32(nil), l...), &row, &fast)
		if got.Token != c.want || fast.Token != c.want {
			t.Errorf("bias %+v: token %d (sampler %d), want %d", c.bias, got.Token, fast.Token, c.want)
		}
		lse := math.Log(math.Exp(3) + math.Exp(2) + math.Exp(1) + 1)
		if want := float64(l[c.want]) - lse; math.Abs(float64(got.Logprob)-want) > 1e-6 || got.Logprob != fast.Logprob {
			t.Errorf("bias %+v: logprob %v (sampler %v), want the raw %v", c.bias, got.Logprob, fast.Logprob, want)
		}
	}
}
