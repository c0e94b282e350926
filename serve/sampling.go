package serve

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/loraplex/loraplex/model"
)

// sampler holds one sequence's sampling state: its RNG and the token counts penalties need.
// The sampling itself is the backend's (model.DeviceSampler, defined by model.SampleReference:
// vLLM's order of banned ids, penalties, temperature, top-k, top-p, min-p and the draw); the
// sampler turns the request's parameters and history into the row the backend samples, with U
// drawn from the request's RNG, so a seed picks the same tokens on every backend.
type sampler struct {
	p        *SamplingParams
	rng      *rand.Rand
	outCount map[int]int  // generated tokens
	seen     map[int]bool // prompt and generated tokens (repetition penalty)
	bias     []model.TokenBias
}

// biasList is a logit_bias as the sampling row takes it, in token order (so that the row does
// not depend on map order).
func biasList(bias map[int]float64) []model.TokenBias {
	if len(bias) == 0 {
		return nil
	}
	out := make([]model.TokenBias, 0, len(bias))
	for t, b := range bias {
		out = append(out, model.TokenBias{Token: int32(t), Bias: float32(b)})
	}
	slices.SortFunc(out, func(a, b model.TokenBias) int { return cmp.Compare(a.Token, b.Token) })
	return out
}

func newSampler(p *SamplingParams, prompt []int) *sampler {
	var seed uint64
	if p.Seed != nil {
		seed = *p.Seed
	} else {
		seed = rand.Uint64()
	}
	s := &sampler{p: p, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), outCount: map[int]int{}, bias: biasList(p.LogitBias)}
	if p.RepetitionPenalty != 0 && p.RepetitionPenalty != 1 {
		s.seen = map[int]bool{}
		for _, t := range prompt {
			s.seen[t] = true
		}
	}
	return s
}

func (s *sampler) observe(tok int) {
	s.outCount[tok]++
	if s.seen != nil {
		s.seen[tok] = true
	}
}

// row fills the sampling row of the sequence's next token: the parameters, the history its
// penalties need, banned ids (EOS and stop ids before min_tokens), the logprobs wanted, and U,
// the next draw of the request's RNG for a stochastic row (also when every token is banned, so
// the stream does not depend on the logits). row's Hist and Banned are reused.
func (s *sampler) row(banned []int, logprobs int, row *model.SampleRow) {
	p := s.p
	hist, ban, top := row.Hist[:0], row.Banned[:0], 0
	*row = model.SampleRow{Temperature: float32(p.Temperature), TopP: float32(p.TopP), MinP: float32(p.MinP),
		RepetitionPenalty: float32(p.RepetitionPenalty), PresencePenalty: float32(p.PresencePenalty),
		FrequencyPenalty: float32(p.FrequencyPenalty), TopK: max(p.TopK, 0)}
	switch {
	case s.seen != nil:
		for t := range s.seen {
			hist = append(hist, model.TokenCount{Token: int32(t), Count: int32(s.outCount[t])})
		}
	case p.FrequencyPenalty != 0 || p.PresencePenalty != 0:
		for t, c := range s.outCount {
			hist = append(hist, model.TokenCount{Token: int32(t), Count: int32(c)})
		}
	}
	for _, t := range banned {
		ban = append(ban, int32(t))
	}
	row.Hist, row.Banned, row.Bias = hist, ban, s.bias
	// The API's logprobs (0 none, -1 chosen only, N chosen and top N) in the row's terms.
	switch {
	case logprobs == 0:
		top = -1
	case logprobs > 0:
		top = logprobs
	}
	row.Logprobs = top
	if row.Temperature >= 1e-5 { // the backend's test for a stochastic row
		// float32 rounding must not reach 1.
		row.U = min(float32(s.rng.Float64()), math.Nextafter32(1, 0))
	}
}
