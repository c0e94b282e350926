package serve

import (
	"math"
	"math/rand/v2"
	"slices"

	"github.com/loraplex/loraplex/model"
)

// sampler holds one sequence's sampling state: its RNG and the token counts penalties need.
// Order of operations follows vLLM: min_tokens masking, penalties, then (unless greedy)
// temperature, top-k, top-p, min-p, and a draw from the renormalised distribution.
type sampler struct {
	p        *SamplingParams
	rng      *rand.Rand
	outCount map[int]int  // generated tokens
	seen     map[int]bool // prompt and generated tokens (repetition penalty)
	order    []int        // scratch: candidate indices
	probs    []float64    // scratch
}

func newSampler(p *SamplingParams, prompt []int) *sampler {
	var seed uint64
	if p.Seed != nil {
		seed = *p.Seed
	} else {
		seed = rand.Uint64()
	}
	s := &sampler{p: p, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), outCount: map[int]int{}}
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

// deviceRow fills row for a backend that samples on the device (model.DeviceSampler): the
// same parameters, the history its penalties need, banned ids, and U drawn from the same RNG
// stream. The device walks the kept tokens in id order rather than rank order, so a seed picks
// the same distribution's tokens but not always the same tokens as the host; unlike sample(),
// a stochastic row draws U even when every token is banned.
func (s *sampler) deviceRow(banned []int, logprobs int, row *model.SampleRow) {
	p := s.p
	hist, ban := row.Hist[:0], row.Banned[:0]
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
	row.Hist, row.Banned = hist, ban
	// The API's logprobs (0 none, -1 chosen only, N chosen and top N) in the row's terms.
	switch {
	case logprobs == 0:
		row.Logprobs = -1
	case logprobs < 0:
		row.Logprobs = 0
	default:
		row.Logprobs = logprobs
	}
	if p.Temperature >= 1e-5 {
		// float32 rounding must not reach 1.
		row.U = min(float32(s.rng.Float64()), math.Nextafter32(1, 0))
	}
}

// sample picks the next token from logits (modified in place). banned tokens (EOS and stop ids
// before min_tokens) are excluded.
func (s *sampler) sample(logits []float32, banned []int) int {
	p := s.p
	ninf := float32(math.Inf(-1))
	for _, t := range banned {
		if t >= 0 && t < len(logits) {
			logits[t] = ninf
		}
	}
	if s.seen != nil {
		rp := float32(p.RepetitionPenalty)
		for t := range s.seen {
			if logits[t] > 0 {
				logits[t] /= rp
			} else {
				logits[t] *= rp
			}
		}
	}
	if p.FrequencyPenalty != 0 || p.PresencePenalty != 0 {
		for t, c := range s.outCount {
			logits[t] -= float32(p.FrequencyPenalty)*float32(c) + float32(p.PresencePenalty)
		}
	}
	if p.Temperature < 1e-5 {
		return argmax(logits)
	}
	// Candidates sorted by logit, best first, then cut by top-k.
	s.order = s.order[:0]
	for i, v := range logits {
		if v != ninf {
			s.order = append(s.order, i)
		}
	}
	if len(s.order) == 0 {
		return argmax(logits)
	}
	slices.SortFunc(s.order, func(a, b int) int {
		switch {
		case logits[a] > logits[b]:
			return -1
		case logits[a] < logits[b]:
			return 1
		}
		return a - b
	})
	if p.TopK > 0 && p.TopK < len(s.order) {
		s.order = s.order[:p.TopK]
	}
	inv := 1 / p.Temperature
	top := float64(logits[s.order[0]])
	s.probs = s.probs[:0]
	var sum float64
	for _, t := range s.order {
		e := math.Exp((float64(logits[t]) - top) * inv)
		s.probs = append(s.probs, e)
		sum += e
	}
	if p.TopP > 0 && p.TopP < 1 {
		var cum float64
		for i, e := range s.probs {
			cum += e / sum
			if cum >= p.TopP {
				s.order, s.probs = s.order[:i+1], s.probs[:i+1]
				break
			}
		}
		sum = 0
		for _, e := range s.probs {
			sum += e
		}
	}
	if p.MinP > 0 {
		// The first probability is the largest; keep tokens with p >= min_p * p_max.
		limit := p.MinP * s.probs[0]
		k := 0
		sum = 0
		for i, e := range s.probs {
			if e >= limit {
				s.order[k], s.probs[k] = s.order[i], e
				k++
				sum += e
			}
		}
		s.order, s.probs = s.order[:k], s.probs[:k]
	}
	u := s.rng.Float64() * sum
	for i, e := range s.probs {
		u -= e
		if u < 0 {
			return s.order[i]
		}
	}
	return s.order[len(s.order)-1]
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// logprobs returns the log-softmax value of tok and, if n > 0, the n most likely tokens, from
// the model's raw logits (before penalties and temperature), as vLLM reports them by default.
func logprobs(logits []float32, tok, n int, scratch []int) (TokenLogprob, []TokenLogprob, []int) {
	maxv := logits[argmax(logits)]
	var sum float64
	for _, v := range logits {
		sum += math.Exp(float64(v - maxv))
	}
	lse := float64(maxv) + math.Log(sum)
	chosen := TokenLogprob{Token: tok, Logprob: float32(float64(logits[tok]) - lse)}
	if n <= 0 {
		return chosen, nil, scratch
	}
	// Partial selection: keep the best n indices in a small sorted slice.
	scratch = scratch[:0]
	for i, v := range logits {
		if len(scratch) == n && v <= logits[scratch[n-1]] {
			continue
		}
		j := len(scratch)
		if j < n {
			scratch = append(scratch, i)
		} else {
			j = n - 1
			scratch[j] = i
		}
		for j > 0 && logits[scratch[j-1]] < v {
			scratch[j], scratch[j-1] = scratch[j-1], scratch[j]
			j--
		}
	}
	top := make([]TokenLogprob, len(scratch))
	for i, t := range scratch {
		top[i] = TokenLogprob{Token: t, Logprob: float32(float64(logits[t]) - lse)}
	}
	return chosen, top, scratch
}
