package model

import (
	"fmt"
	"math"
)

// Scoring is the other use of a logits row besides sampling: the log-probability of a token
// that is already known (the prompt's next token), for loglikelihood evaluation (OpenAI's echo
// with logprobs, vLLM's prompt_logprobs). A step's scored rows follow its sampled rows in
// s.LogitRows (Runner.ForwardSampleScore); they are read back to the host a few rows at a time
// and scored there by ScoreReference, on every backend alike.

// ScoreRow asks for the log-probability of Token under one logits row's raw logits (no
// sampling parameter applies), its rank, and the Logprobs (<= MaxSampleLogprobs) most likely
// tokens.
type ScoreRow struct {
	Token    int32
	Logprobs int
}

// ScoreResult is one scored row.
type ScoreResult struct {
	Logprob float32
	// Rank is vLLM's: the number of tokens whose logit is at least Token's (1 for the unique
	// most likely token).
	Rank int
	Top  []TokenLogprob // most likely first, ties by lower id (as SampleResult.Top)
}

// scoreChunk is how many logits rows the runner reads back at once to score: the host copy
// stays scoreChunk x vocab floats whatever the step.
const scoreChunk = 8

// CheckScoreRows validates rows against the vocabulary size.
func CheckScoreRows(rows []ScoreRow, vocab int) error {
	for i, r := range rows {
		if r.Token < 0 || int(r.Token) >= vocab {
			return fmt.Errorf("score row %d: token %d outside the vocabulary of %d", i, r.Token, vocab)
		}
		if r.Logprobs < 0 || r.Logprobs > MaxSampleLogprobs {
			return fmt.Errorf("score row %d: %d logprobs, want 0..%d", i, r.Logprobs, MaxSampleLogprobs)
		}
	}
	return nil
}

// ScoreReference scores one raw logits row (left unchanged).
func ScoreReference(logits []float32, row *ScoreRow, out *ScoreResult) {
	mx := float32(math.Inf(-1))
	for _, v := range logits {
		mx = max(mx, v)
	}
	var se float64
	for _, v := range logits {
		se += math.Exp(float64(v - mx))
	}
	lse := float64(mx) + math.Log(se)
	t := logits[row.Token]
	rank := 0
	for _, v := range logits {
		if v >= t {
			rank++
		}
	}
	out.Logprob = float32(float64(t) - lse)
	out.Rank = rank
	out.Top = topLogprobs(logits, row.Logprobs, lse, out.Top[:0])
}

// score reads the logits rows [first, first+len(rows)) back scoreChunk at a time and scores
// them. The host buffer is allocated on the first scored step and reused.
func (r *Runner) score(first int, rows []ScoreRow, out []ScoreResult) error {
	if len(rows) == 0 {
		return nil
	}
	V := r.Cfg.VocabSize
	if r.scoreBuf == nil {
		r.scoreBuf = make([]float32, scoreChunk*V)
	}
	for k := 0; k < len(rows); k += scoreChunk {
		n := min(scoreChunk, len(rows)-k)
		buf := r.scoreBuf[:n*V]
		if err := r.B.Read(r.logits.Slice(first+k, n), buf); err != nil {
			return err
		}
		for j := 0; j < n; j++ {
			ScoreReference(buf[j*V:(j+1)*V], &rows[k+j], &out[k+j])
		}
	}
	return nil
}
