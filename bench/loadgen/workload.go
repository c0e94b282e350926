package main

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// Range is a length that is fixed (Lo == Hi) or uniform over [Lo, Hi].
type Range struct{ Lo, Hi int }

// ParseRange reads "32" or "16:64".
func ParseRange(s string) (Range, error) {
	lo, hi, isRange := strings.Cut(s, ":")
	a, err := strconv.Atoi(strings.TrimSpace(lo))
	if err != nil {
		return Range{}, fmt.Errorf("length %q: want N or A:B", s)
	}
	b := a
	if isRange {
		if b, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil {
			return Range{}, fmt.Errorf("length %q: want N or A:B", s)
		}
	}
	if a < 1 || b < a {
		return Range{}, fmt.Errorf("length %q: want 1 <= A <= B", s)
	}
	return Range{a, b}, nil
}

func (r Range) draw(rng *rand.Rand) int { return r.Lo + rng.IntN(r.Hi-r.Lo+1) }

func (r Range) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(r.Lo)
	}
	return fmt.Sprintf("%d:%d", r.Lo, r.Hi)
}

// Planned is one request of a run, decided before the run starts.
type Planned struct {
	At        time.Duration // send offset from the start of the run
	Adapter   int           // index into the adapter list (ignored on the base-only run)
	PromptIDs []int         // token-id prompt, or
	PromptTxt string        // a text prompt
	PromptLen int           // tokens (ids) or words (text) asked for
	MaxTokens int
	// KeepOutput keeps the output token ids in the Result (multi-turn chats resend them).
	KeepOutput bool
}

// Workload is everything that shapes the plan.
type Workload struct {
	Rate       float64
	Window     time.Duration
	Count      int
	Picker     Picker
	PromptLen  Range
	OutputLen  Range
	TextPrompt bool
	TokenMax   int // token-id prompts draw ids from [0, TokenMax)
	Seed       uint64
}

// Plan draws the whole run from the seed. The base-only and the adapter runs replay the same
// plan, so their only difference is the model each request names.
func (w Workload) Plan() []Planned {
	rng := rand.New(rand.NewPCG(w.Seed, 0x9e3779b97f4a7c15))
	at := PoissonArrivals(rng, w.Rate, w.Window, w.Count)
	out := make([]Planned, len(at))
	for i, t := range at {
		p := Planned{At: t, Adapter: w.Picker.Pick(rng), PromptLen: w.PromptLen.draw(rng), MaxTokens: w.OutputLen.draw(rng)}
		if w.TextPrompt {
			p.PromptTxt = randomText(rng, p.PromptLen)
		} else {
			p.PromptIDs = make([]int, p.PromptLen)
			for j := range p.PromptIDs {
				p.PromptIDs[j] = rng.IntN(w.TokenMax)
			}
		}
		out[i] = p
	}
	return out
}

var words = strings.Fields(`the of and to in is was for on that with as by at from his her
an be this which or are have not had one all were they but their been there has would can more
when time into only other some new could these two may first then do any like my now over such
our man me even most made after also did many before must through years where much way well
down should because each just those people how too little state good very make world still own`)

// randomText is n random common words: about n tokens for BPE vocabularies (the demo's byte
// tokenizer sees one token per byte, about five per word).
func randomText(rng *rand.Rand, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(words[rng.IntN(len(words))])
	}
	return b.String()
}
