package model

import (
	"math"
)

// Sampler computes SampleReference at a host's speed: the same operations on the same values,
// so it picks the same token and logprobs bit for bit, but each probability is evaluated once,
// top-k is a selection instead of a bisection over the whole row, and top-p narrows its cut-off
// over the survivors only. Backends that sample on the
// host (the CPU backend) use it; the CUDA kernel follows SampleReference step by step. A
// Sampler keeps its scratch between rows: once grown to the vocabulary it allocates nothing.
// It is not safe for concurrent use.
type Sampler struct {
	keys      []uint64     // rank keys of the finite logits (top-k selection)
	cands     []sampleCand // candidates in id order: the finite logits, then top-k's survivors
	undecided []sampleCand // top-p's narrowing: tokens not yet known to be in or out
	rawHist   []float32    // raw logits of the history, banned and biased tokens, for the chosen logprob
	rawBan    []float32
	rawBias   []float32
}

// sampleCand is a candidate token: its rank key (rankKey), probability and mass.
type sampleCand struct {
	rk   uint64
	mass uint64
	p    float32
}

// rankKey orders tokens by (logit desc, id asc): a larger key ranks earlier. "Token i is in
// the cut-off t" of SampleReference is rankKey(i) >= rankKey(t).
func rankKey(v float32, i int) uint64 {
	return uint64(orderKey(v))<<32 | uint64(^uint32(i))
}

func (c sampleCand) id() int { return int(^uint32(c.rk)) }

// Sample is SampleReference(logits, row, out): logits is one raw row and is modified in place.
func (s *Sampler) Sample(logits []float32, row *SampleRow, out *SampleResult) {
	V := len(logits)
	ninf := float32(math.Inf(-1))
	// The raw log-sum-exp, only for rows that want logprobs (nothing else depends on it).
	var lse float64
	if row.Logprobs >= 0 {
		mx := ninf
		for _, v := range logits {
			mx = max(mx, v)
		}
		var se float64
		for _, v := range logits {
			se += math.Exp(float64(v - mx))
		}
		lse = float64(mx) + math.Log(se)
	}
	out.Top = topLogprobs(logits, row.Logprobs, lse, out.Top[:0])

	// Raw values of the tokens about to change, for the chosen token's logprob.
	s.rawBan = s.rawBan[:0]
	for _, t := range row.Banned {
		if t >= 0 && int(t) < V {
			s.rawBan = append(s.rawBan, logits[t])
		} else {
			s.rawBan = append(s.rawBan, 0)
		}
	}
	s.rawHist = s.rawHist[:0]
	for _, h := range row.Hist {
		s.rawHist = append(s.rawHist, logits[h.Token])
	}
	s.rawBias = s.rawBias[:0]
	for _, b := range row.Bias {
		s.rawBias = append(s.rawBias, logits[b.Token])
	}
	banAndPenalize(logits, row)
	tok := s.choose(logits, row)
	out.Token = int32(tok)
	out.Logprob = 0
	if row.Logprobs >= 0 {
		v := logits[tok]
		if j := indexToken(row.Banned, int32(tok)); j >= 0 {
			v = s.rawBan[j]
		} else if j := indexHist(row.Hist, int32(tok)); j >= 0 {
			v = s.rawHist[j]
		} else if j := indexBias(row.Bias, int32(tok)); j >= 0 {
			v = s.rawBias[j]
		}
		out.Logprob = float32(float64(v) - lse)
	}
}

func indexToken(ts []int32, t int32) int {
	for j, x := range ts {
		if x == t {
			return j
		}
	}
	return -1
}

func indexHist(hs []TokenCount, t int32) int {
	for j, h := range hs {
		if h.Token == t {
			return j
		}
	}
	return -1
}

func indexBias(bs []TokenBias, t int32) int {
	for j, b := range bs {
		if b.Token == t {
			return j
		}
	}
	return -1
}

// topLogprobs appends the n most likely raw tokens, most likely first and ties by lower id, as
// SampleReference's n argmax passes find them (one pass here, insertion into a list of n).
func topLogprobs(logits []float32, n int, lse float64, top []TokenLogprob) []TokenLogprob {
	if n <= 0 {
		return top
	}
	// top holds logits' values while it is built; they become logprobs at the end.
	for i, v := range logits {
		k := len(top)
		if k == n {
			if !(v > top[k-1].Logprob) {
				continue
			}
			k--
		} else {
			top = append(top, TokenLogprob{})
		}
		// Ids arrive in increasing order, so v goes after every entry not below it.
		for k > 0 && v > top[k-1].Logprob {
			top[k] = top[k-1]
			k--
		}
		top[k] = TokenLogprob{Token: int32(i), Logprob: v}
	}
	for j := range top {
		top[j].Logprob = float32(float64(top[j].Logprob) - lse)
	}
	return top
}

// choose is referenceChoose.
func (s *Sampler) choose(l []float32, row *SampleRow) int {
	ninf := float32(math.Inf(-1))
	if row.Temperature < 1e-5 {
		return argmaxF32(l)
	}
	mx, cand := finiteMax(l)
	if cand == 0 {
		return argmaxF32(l)
	}
	invT := 1 / row.Temperature

	// Top-k keeps the TopK best-ranked finite tokens: those at or above the TopK-th rank key.
	minKey := uint64(0)
	if row.TopK > 0 && row.TopK < cand {
		s.keys = s.keys[:0]
		for i, v := range l {
			if v != ninf {
				s.keys = append(s.keys, rankKey(v, i))
			}
		}
		minKey = nthLargest(s.keys, row.TopK)
	}
	c := s.cands[:0]
	for i, v := range l {
		if v == ninf {
			continue
		}
		if rk := rankKey(v, i); rk >= minKey {
			p := SampleExp(float32((v - mx) * invT))
			c = append(c, sampleCand{rk: rk, p: p, mass: SampleMass(p)})
		}
	}
	s.cands = c

	// Top-p keeps the shortest rank prefix of the survivors whose mass reaches TopP times
	// theirs.
	if row.TopP > 0 && row.TopP < 1 {
		var total uint64
		for _, x := range c {
			total += x.mass
		}
		minKey = s.topPKey(topPTarget(row.TopP, total))
	}
	var sum uint64
	last := -1
	for _, x := range c {
		if x.rk >= minKey && (row.MinP <= 0 || x.p >= row.MinP) && x.mass > 0 {
			sum += x.mass
			last = x.id()
		}
	}
	target := scaleMass(row.U, sum)
	var cum uint64
	for _, x := range c {
		if x.rk >= minKey && (row.MinP <= 0 || x.p >= row.MinP) {
			cum += x.mass
			if cum > target {
				return x.id()
			}
		}
	}
	return last
}

// topPKey returns the rank key of the last token of the shortest rank prefix of s.cands whose
// mass reaches target, by narrowing: a pivot's prefix either reaches target (the answer ends at
// the pivot or before it) or not (everything up to the pivot is in). Masses are integers, so
// the sum of the tokens known to be in is kept as they are decided.
func (s *Sampler) topPKey(target uint64) uint64 {
	und := append(s.undecided[:0], s.cands...)
	var in uint64 // mass of the tokens known to be in
	best := uint64(0)
	for len(und) > 0 {
		piv := medianKey(und[0].rk, und[len(und)/2].rk, und[len(und)-1].rk)
		sum := in
		for _, x := range und {
			if x.rk >= piv {
				sum += x.mass
			}
		}
		if sum >= target {
			best = piv
			und = keepAbove(und, piv)
		} else {
			in = sum
			und = keepBelow(und, piv)
		}
	}
	s.undecided = und
	return best
}

// keepAbove keeps the entries ranked strictly before key (in place, order kept).
func keepAbove(c []sampleCand, key uint64) []sampleCand {
	k := 0
	for _, x := range c {
		if x.rk > key {
			c[k] = x
			k++
		}
	}
	return c[:k]
}

// keepBelow keeps the entries ranked strictly after key (in place, order kept).
func keepBelow(c []sampleCand, key uint64) []sampleCand {
	k := 0
	for _, x := range c {
		if x.rk < key {
			c[k] = x
			k++
		}
	}
	return c[:k]
}

func medianKey(a, b, c uint64) uint64 {
	if a > b {
		a, b = b, a
	}
	if b > c {
		b = c
	}
	return max(a, b)
}

// nthLargest returns the n-th largest of keys (1-based; keys are distinct), reordering keys.
func nthLargest(keys []uint64, n int) uint64 {
	lo, hi, want := 0, len(keys)-1, n-1 // want: index in descending order
	for lo < hi {
		piv := medianKey(keys[lo], keys[(lo+hi)/2], keys[hi])
		// Three-way partition of keys[lo..hi] into > piv, == piv, < piv.
		i, lt, gt := lo, lo, hi
		for i <= gt {
			switch {
			case keys[i] > piv:
				keys[i], keys[lt] = keys[lt], keys[i]
				lt++
				i++
			case keys[i] < piv:
				keys[i], keys[gt] = keys[gt], keys[i]
				gt--
			default:
				i++
			}
		}
		switch {
		case want < lt:
			hi = lt - 1
		case want > gt:
			lo = gt + 1
		default:
			return piv
		}
	}
	return keys[want]
}
