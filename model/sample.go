package model

import (
	"fmt"
	"math"
	mbits "math/bits"
)

// Sampling is the backend's. Every backend implements DeviceSampler and chooses the next token
// of every logits row itself (on a GPU only the chosen tokens and requested logprobs come back
// to the host instead of rows x vocab floats). SampleReference is the one definition of what
// they compute, in Go: the CUDA kernel follows it step by step, the CPU backend runs it through
// Sampler (the same arithmetic, faster), and the engine draws each row's U from the request's
// RNG, so a seeded request picks the same tokens on every backend.

// MaxSampleLogprobs is the most top logprobs a row may ask for.
const MaxSampleLogprobs = 20

// MaxSampleBias is the most SampleRow.Bias entries a row may carry (the bound on a request's
// logit_bias, serve.MaxLogitBias): it bounds the sampler's work on the list (the CUDA kernel
// checks every entry against the others for repeated tokens).
const MaxSampleBias = 1024

// TokenCount is one token of a sequence's history: Count is how often it was generated
// (0: it occurs in the prompt only).
type TokenCount struct {
	Token, Count int32
}

// TokenLogprob is a token with its log-probability under the raw logits.
type TokenLogprob struct {
	Token   int32
	Logprob float32
}

// SampleRow holds one logits row's sampling parameters, with vLLM's semantics and order:
// banned ids -> repetition penalty (Hist tokens: positive logits divided, negative multiplied;
// 0 or 1 disables) -> frequency and presence penalties (Hist tokens with Count > 0) -> greedy
// if Temperature < 1e-5, else temperature, top-k (0 disables), top-p (over the top-k
// survivors; 0 or >= 1 disables), min-p (keep p >= MinP * p_max; 0 disables), and a draw with
// U in [0, 1).
type SampleRow struct {
	Temperature, TopP, MinP                              float32
	RepetitionPenalty, PresencePenalty, FrequencyPenalty float32
	TopK                                                 int
	// Hist lists each distinct token of prompt + output once. Rows without penalties may leave
	// it empty.
	Hist []TokenCount
	// Banned tokens get -inf before everything else (EOS and stop ids before min_tokens).
	// Ids outside the vocabulary are ignored.
	Banned []int32
	// Bias is added to its tokens' logits after the bans and before the penalties (OpenAI's
	// and vLLM's logit_bias), at most MaxSampleBias entries (a token listed twice gets both, in
	// order). Only backends that implement LogitBiaser apply it; the runner refuses rows with
	// a bias on the others.
	Bias []TokenBias
	// Allowed, when not nil, is constrained decoding's mask: a bitmap over the vocabulary (bit
	// i%64 of word i/64, (vocab+63)/64 words) of the only tokens the row may produce; the others
	// get -inf with the banned ones. Backends honour it only if they implement TokenMasker;
	// the engine gives masks to no other. It is shared between rows and never modified.
	Allowed []uint64
	// Logprobs: -1 none, 0 the chosen token's, N (<= MaxSampleLogprobs) also the N most
	// likely tokens. All are log-softmax values of the raw logits (before penalties).
	Logprobs int
	U        float32
}

// TokenBias is one logit_bias entry: Bias is added to Token's logit.
type TokenBias struct {
	Token int32
	Bias  float32
}

// LogitBiaser is implemented by backends whose sampler applies SampleRow.Bias (the CPU and
// CUDA backends); the engine refuses logit_bias on the others.
type LogitBiaser interface {
	AppliesLogitBias() bool
}

// AppliesLogitBias reports whether the runner's backend applies SampleRow.Bias (LogitBiaser).
func (r *Runner) AppliesLogitBias() bool {
	lb, ok := r.B.(LogitBiaser)
	return ok && lb.AppliesLogitBias()
}

// SampleReserver is implemented by backends that size their sampler's buffers up front:
// NewRunner calls ReserveSampling with the most rows a step samples and the vocabulary, so
// that no step allocates (the CUDA backend's pinned and device buffers for the rows'
// parameters, results and allowed-token masks).
type SampleReserver interface {
	ReserveSampling(rows, vocab int) error
}

// SampleResult is what the device returns for one row.
type SampleResult struct {
	Token   int32
	Logprob float32        // of Token under the raw logits; 0 when Logprobs < 0
	Top     []TokenLogprob // Logprobs > 0: most likely first, ties by lower id
}

// DeviceSampler is the backend's sampler (the engine's only one): Sample computes
// SampleReference for every row. It runs after the forward pass; logits ([len(rows), vocab],
// F32) may be overwritten. out[i].Top is reused when its capacity suffices.
type DeviceSampler interface {
	Sample(logits Tensor, rows []SampleRow, out []SampleResult) error
}

// CheckSampleRows validates rows against the vocabulary size (backends call it first).
func CheckSampleRows(rows []SampleRow, vocab int) error {
	if vocab > MaxSampleVocab {
		return fmt.Errorf("sample rows: a vocabulary of %d tokens, at most %d", vocab, MaxSampleVocab)
	}
	for i := range rows {
		r := &rows[i]
		if r.Logprobs > MaxSampleLogprobs {
			return fmt.Errorf("sample row %d: %d logprobs, at most %d", i, r.Logprobs, MaxSampleLogprobs)
		}
		if r.U < 0 || r.U >= 1 || r.U != r.U {
			return fmt.Errorf("sample row %d: U %v outside [0, 1)", i, r.U)
		}
		if r.Allowed != nil && len(r.Allowed) != (vocab+63)/64 {
			return fmt.Errorf("sample row %d: an allowed-token mask of %d words for a vocabulary of %d", i, len(r.Allowed), vocab)
		}
		for _, h := range r.Hist {
			if h.Token < 0 || int(h.Token) >= vocab || h.Count < 0 {
				return fmt.Errorf("sample row %d: history token %d (count %d) outside the vocabulary of %d", i, h.Token, h.Count, vocab)
			}
		}
		if len(r.Bias) > MaxSampleBias {
			return fmt.Errorf("sample row %d: %d bias entries, at most %d", i, len(r.Bias), MaxSampleBias)
		}
		for _, b := range r.Bias {
			if b.Token < 0 || int(b.Token) >= vocab || b.Bias != b.Bias || math.IsInf(float64(b.Bias), 0) {
				return fmt.Errorf("sample row %d: bias %v of token %d (vocabulary of %d)", i, b.Bias, b.Token, vocab)
			}
		}
	}
	return nil
}

// ForwardSample runs the step like Forward and samples every logits row on the device:
// rows[k] and out[k] belong to s.LogitRows[k]. The backend must implement DeviceSampler. It
// returns once the step is complete (see StepSynchronizer).
func (r *Runner) ForwardSample(s *Step, adapters []*Adapter, rows []SampleRow, out []SampleResult) error {
	return r.ForwardSampleScore(s, adapters, rows, out, nil, nil)
}

// ForwardSampleScore is ForwardSample for steps that also score rows: s.LogitRows lists the
// rows to sample first (rows[k], out[k]), then the rows to score (score[k], scoreOut[k]; see
// ScoreRow).
func (r *Runner) ForwardSampleScore(s *Step, adapters []*Adapter, rows []SampleRow, out []SampleResult, score []ScoreRow, scoreOut []ScoreResult) error {
	ds, ok := r.B.(DeviceSampler)
	if !ok {
		return fmt.Errorf("runner: backend %s does not sample on the device", r.B.Name())
	}
	m := len(s.LogitRows)
	if len(rows)+len(score) != m || len(out) != len(rows) || len(scoreOut) != len(score) {
		return fmt.Errorf("runner: %d sample rows, %d results, %d score rows and %d results for %d logit rows",
			len(rows), len(out), len(score), len(scoreOut), m)
	}
	if err := CheckSampleRows(rows, r.Cfg.VocabSize); err != nil {
		return fmt.Errorf("runner: %w", err)
	}
	if !r.AppliesLogitBias() {
		for i := range rows {
			if len(rows[i].Bias) > 0 {
				return fmt.Errorf("runner: backend %s does not apply a logit bias", r.B.Name())
			}
		}
	}
	if err := CheckScoreRows(score, r.Cfg.VocabSize); err != nil {
		return fmt.Errorf("runner: %w", err)
	}
	return r.step(s, adapters, nil, ds, rows, out, score, scoreOut)
}

// CanSample reports whether the backend samples (DeviceSampler), which ForwardSample needs.
func (r *Runner) CanSample() bool {
	_, ok := r.B.(DeviceSampler)
	return ok
}

// orderKey maps a float32 to a uint32 whose unsigned order is the float order (-inf lowest).
func orderKey(f float32) uint32 {
	u := math.Float32bits(f)
	if u&0x80000000 != 0 {
		return ^u
	}
	return u | 0x80000000
}

// SampleReference is the device sampler's definition (kernels/sampling.cu follows it step by
// step); logits is one raw row and is modified in place.
//
// Stochastic rows: p_i = SampleExp((l_i - max) / T) in float32 for every finite penalised
// logit, and its mass m_i = SampleMass(p_i), an integer. Tokens are ranked by (logit desc,
// id asc). Top-k keeps the first k, top-p the shortest prefix of those whose mass reaches
// TopP times theirs (at least the first), min-p those with p_i >= MinP (p_max is 1). The draw walks the kept
// tokens in id order and returns the first whose running mass exceeds U * mass(kept) (the
// last kept one if rounding leaves none). The kept set and its probabilities are vLLM's.
//
// Every step is exact and independent of the order of summation (float32 operations rounded
// one by one, integer sums), so a backend that sums in parallel (the CUDA kernel) and one that
// sums in a loop (Sampler) pick the same token for the same U, bit for bit.
func SampleReference(logits []float32, row *SampleRow, out *SampleResult) {
	V := len(logits)
	ninf := float32(math.Inf(-1))
	// Raw logprobs.
	mx := ninf
	for _, v := range logits {
		mx = max(mx, v)
	}
	var se float64
	for _, v := range logits {
		se += math.Exp(float64(v - mx))
	}
	lse := float64(mx) + math.Log(se)
	out.Top = out.Top[:0]
	for n := 0; n < row.Logprobs; n++ {
		best := -1
		for i, v := range logits {
			if n > 0 {
				prev := out.Top[n-1].Token
				pv := logits[prev]
				if !(v < pv || (v == pv && int32(i) > prev)) {
					continue
				}
			}
			if best < 0 || v > logits[best] {
				best = i
			}
		}
		if best < 0 {
			break
		}
		out.Top = append(out.Top, TokenLogprob{Token: int32(best), Logprob: float32(float64(logits[best]) - lse)})
	}
	// Raw values of the tokens about to change, for the chosen token's logprob.
	raw := map[int32]float32{}
	for _, t := range row.Banned {
		if t >= 0 && int(t) < V {
			raw[t] = logits[t]
		}
	}
	for _, h := range row.Hist {
		raw[h.Token] = logits[h.Token]
	}
	for _, b := range row.Bias {
		raw[b.Token] = logits[b.Token]
	}
	banAndPenalize(logits, row)
	tok := referenceChoose(logits, row)
	out.Token = int32(tok)
	out.Logprob = 0
	if row.Logprobs >= 0 {
		v, ok := raw[int32(tok)]
		if !ok {
			v = logits[tok]
		}
		out.Logprob = float32(float64(v) - lse)
	}
}

func argmaxF32(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// Constants of SampleExp, as bit patterns so that Go and CUDA use the very same values.
var (
	expLog2E = math.Float32frombits(0x3fb8aa3b) // log2(e)
	expLn2Hi = math.Float32frombits(0x3f317200) // ln 2, high part (15 significant bits)
	expLn2Lo = math.Float32frombits(0x35bfbe8e) // ln 2 - expLn2Hi
	expC     = [...]float32{1, 1, 0.5, math.Float32frombits(0x3e2aaaab), math.Float32frombits(0x3d2aaaab),
		math.Float32frombits(0x3c088889), math.Float32frombits(0x3ab60b61)} // 1/n!
)

// SampleExp is e^x for x <= 0 (x = (logit - max) / T), to 3e-7 relative, 0 below -86.
// It is part of the sampling definition: every step is a float32 operation rounded on its own
// (the explicit conversions forbid fused multiply-adds), so the CUDA kernel's sample_exp,
// written with the same operations in the same order, gives the same bits.
func SampleExp(x float32) float32 {
	if !(x >= -86) {
		return 0 // also -inf and NaN; e^-86 is below any mass (SampleMass)
	}
	// e^x = 2^k e^r with k = round(x log2 e) in [-125, 0] and |r| <= ln2/2 (Cody-Waite).
	k := float32(math.Floor(float64(float32(float32(x*expLog2E) + 0.5))))
	r := float32(x - float32(k*expLn2Hi))
	r = float32(r - float32(k*expLn2Lo))
	q := expC[6]
	for n := 5; n >= 0; n-- {
		q = float32(expC[n] + float32(r*q))
	}
	return float32(q * math.Float32frombits(uint32(int32(k)+127)<<23))
}

// SampleMass is a probability's mass: p (in [0, 1]) in units of 2^-40, truncated. Sums of
// masses are integers, exact in any order; a vocabulary of up to MaxSampleVocab tokens cannot
// overflow them.
func SampleMass(p float32) uint64 { return uint64(float64(p) * (1 << 40)) }

// MaxSampleVocab is the largest vocabulary sampling takes (mass sums stay at most 2^63).
const MaxSampleVocab = 1 << 23

// scaleMass returns floor(f * m) computed in float64 (f in [0, 1)), as the kernel does.
func scaleMass(f float32, m uint64) uint64 { return uint64(float64(f) * float64(m)) }

// topPTarget is the mass top-p's prefix must reach: floor(TopP * total), but at least 1 so
// that a TopP too small for the integer masses still keeps the best token (as vLLM does)
// rather than none.
func topPTarget(topP float32, total uint64) uint64 { return max(scaleMass(topP, total), 1) }

// referenceChoose picks from penalised logits; see SampleReference.
func referenceChoose(l []float32, row *SampleRow) int {
	ninf := float32(math.Inf(-1))
	if row.Temperature < 1e-5 {
		return argmaxF32(l)
	}
	mx, cand := finiteMax(l)
	if cand == 0 {
		return argmaxF32(l)
	}
	invT := 1 / row.Temperature
	p := func(i int) float32 { return SampleExp(float32((l[i] - mx) * invT)) }
	// in(i, t): token i ranks at or before the threshold t = (value key, id).
	type thr struct {
		key uint32
		idx int
	}
	in := func(i int, t thr) bool {
		k := orderKey(l[i])
		return k > t.key || (k == t.key && i <= t.idx)
	}
	all := thr{0, len(l)}
	// cut finds the highest-ranked threshold t with pred(tokens ranked at or before t) true,
	// searching the value key first, then ids among ties (what the kernel does).
	cut := func(pred func(t thr) bool) thr {
		lo, hi := uint64(0), uint64(math.MaxUint32) // the largest key with pred({k >= key}) true
		for lo < hi {
			mid := lo + (hi-lo+1)/2
			if pred(thr{uint32(mid), len(l)}) {
				lo = mid
			} else {
				hi = mid - 1
			}
		}
		ilo, ihi := 0, len(l) // smallest idx with pred true
		for ilo < ihi {
			mid := (ilo + ihi) / 2
			if pred(thr{uint32(lo), mid}) {
				ihi = mid
			} else {
				ilo = mid + 1
			}
		}
		return thr{uint32(lo), ilo}
	}
	finite := func(i int) bool { return l[i] != ninf }
	kt := all
	if row.TopK > 0 && row.TopK < cand {
		kt = cut(func(t thr) bool {
			n := 0
			for i := range l {
				if finite(i) && in(i, t) {
					n++
				}
			}
			return n >= row.TopK
		})
	}
	pt := all
	if row.TopP > 0 && row.TopP < 1 {
		var total uint64
		for i := range l {
			if finite(i) && in(i, kt) {
				total += SampleMass(p(i))
			}
		}
		target := topPTarget(row.TopP, total)
		pt = cut(func(t thr) bool {
			var s uint64
			for i := range l {
				if finite(i) && in(i, kt) && in(i, t) {
					s += SampleMass(p(i))
				}
			}
			return s >= target
		})
	}
	kept := func(i int) bool {
		return finite(i) && in(i, kt) && in(i, pt) && (row.MinP <= 0 || p(i) >= row.MinP)
	}
	var sum uint64
	last := -1
	for i := range l {
		if kept(i) && SampleMass(p(i)) > 0 { // a mass below 2^-40 is never drawn
			sum += SampleMass(p(i))
			last = i
		}
	}
	target := scaleMass(row.U, sum)
	var cum uint64
	for i := range l {
		if kept(i) {
			cum += SampleMass(p(i))
			if cum > target {
				return i
			}
		}
	}
	return last
}

// banAndPenalize masks the tokens row does not allow and its banned tokens, adds its logit
// bias and applies its penalties to logits in place, in vLLM's order: the mask and the bans,
// the bias, then per history token the repetition penalty, then frequency and presence. The
// one copy of this step for SampleReference and Sampler.
func banAndPenalize(logits []float32, row *SampleRow) {
	V := len(logits)
	if row.Allowed != nil {
		ninf := float32(math.Inf(-1))
		// Visit only the disallowed tokens (the zero bits), a word at a time.
		for w, bits := range row.Allowed {
			for off := ^bits; off != 0; off &= off - 1 {
				if i := w*64 + mbits.TrailingZeros64(off); i < V {
					logits[i] = ninf
				}
			}
		}
	}
	for _, t := range row.Banned {
		if t >= 0 && int(t) < V {
			logits[t] = float32(math.Inf(-1))
		}
	}
	for _, b := range row.Bias {
		logits[b.Token] += b.Bias
	}
	rp := row.RepetitionPenalty
	for _, h := range row.Hist {
		l := logits[h.Token]
		if rp != 0 && rp != 1 {
			if l > 0 {
				l /= rp
			} else {
				l *= rp
			}
		}
		if h.Count > 0 {
			// float32(...) keeps the product rounded on its own (no fused multiply-add), as
			// on the device.
			l -= float32(row.FrequencyPenalty*float32(h.Count)) + row.PresencePenalty
		}
		logits[h.Token] = l
	}
}

// finiteMax returns the largest finite logit and how many logits are finite (the tokens a
// stochastic draw may pick); both samplers start from it.
func finiteMax(l []float32) (mx float32, n int) {
	ninf := float32(math.Inf(-1))
	mx = ninf
	for _, v := range l {
		if v != ninf {
			mx = max(mx, v)
			n++
		}
	}
	return mx, n
}
