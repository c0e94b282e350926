package serve

import (
	"context"
	"errors"
	"strings"
	"testing"

	"math/rand/v2"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/structured"
	"github.com/loraplex/loraplex/tokenizer"
)

// samplerOnly is a backend that samples but does not declare model.TokenMasker: the CPU
// backend seen through the two interfaces alone.
type samplerOnly struct {
	model.Backend
	model.DeviceSampler
}

// cpuDemo builds the demo model (tokenizer included) on a CPU backend; both are closed when
// the test ends.
func cpuDemo(t testing.TB) (*cpu.Backend, *model.Config, *model.Weights, *tokenizer.Tokenizer) {
	t.Helper()
	be := cpu.New(2)
	t.Cleanup(be.Close)
	cfg, w, tok, _, err := demo.Build(be)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return be, cfg, w, tok
}

// A constrained request on a backend whose sampler does not honour masks is refused naming
// the field, never run unconstrained; the same request runs on the CPU backend.
func TestConstraintNeedsTokenMasker(t *testing.T) {
	be, cfg, w, tok := cpuDemo(t)
	prompt, _ := tok.Encode("x", false)
	p := SamplingParams{MaxTokens: 8, Constraint: &Constraint{Spec: structured.Spec{Kind: structured.Choice, Choices: []string{"yes", "no"}}, Param: "guided_choice"}}
	for _, masks := range []bool{false, true} {
		var b model.Backend = samplerOnly{be, be}
		if masks {
			b = be
		}
		e, err := NewEngine(cfg, b, w, tok, Options{ModelName: demo.Name, MaxNumSeqs: 2, MaxBatchedTokens: 64, MaxModelLen: 64})
		if err != nil {
			t.Fatal(err)
		}
		st, err := e.Generate(context.Background(), Request{Model: demo.Name, Prompt: prompt, Params: p})
		if !masks {
			if KindOf(err) != KindInvalid || !strings.Contains(err.Error(), "not supported") {
				t.Errorf("without TokenMasker: %v", err)
			}
			var ae *Error
			if !errors.As(err, &ae) || ae.Param != "guided_choice" {
				t.Errorf("error %v does not name guided_choice", err)
			}
		} else {
			if err != nil {
				t.Fatal(err)
			}
			ev, err := st.Collect(context.Background())
			if err != nil || (ev.Text != "yes" && ev.Text != "no") || ev.Finish != "stop" {
				t.Errorf("on the CPU: %q %s %v", ev.Text, ev.Finish, err)
			}
		}
		e.Close()
	}
}

// Constrained rows keep the sampling path allocation-free once their state's mask is cached,
// and every row samples a token its mask allows.
func TestConstrainedSamplingPathAllocatesNothing(t *testing.T) {
	b := cpu.New(1)
	defer b.Close()
	const vocab, n = 4096, 8
	v := structured.NewVocab(vocab, 256, func(id int) ([]byte, bool) { return []byte{byte(id)}, true }, []int{0})
	g, err := structured.NewCompiler(v).Compile(structured.Spec{Kind: structured.Regex, Text: `[a-f]+x`})
	if err != nil {
		t.Fatal(err)
	}
	e := &Engine{eos: map[int]bool{0: true, 7: true}}
	e.stepSeq = stepSequences(n, vocab)
	for _, sq := range e.stepSeq {
		sq.params.MinTokens = 0
		sq.matcher = g.NewMatcher()
		sq.matcher.Advance('a')
	}
	r := rand.New(rand.NewPCG(1, 2))
	flat := make([]float32, n*vocab)
	for i := range flat {
		flat[i] = float32(r.NormFloat64() * 2)
	}
	lt := b.Alloc(n, vocab)
	step := func() {
		if err := b.Write(lt, flat); err != nil {
			t.Fatal(err)
		}
		if err := b.Sample(lt, e.sampleRows(), e.sampleOut[:n]); err != nil {
			t.Fatal(err)
		}
	}
	step()
	for i, o := range e.sampleOut[:n] {
		if c := o.Token; !(c >= 'a' && c <= 'f' || c == 'x') {
			t.Errorf("row %d sampled %d, outside [a-fx]", i, c)
		}
	}
	if raceEnabled {
		return // the race detector's instrumentation allocates
	}
	if a := testing.AllocsPerRun(50, step); a > 0 {
		t.Fatalf("%v allocations per step", a)
	}
}

// Deterministic mode on a backend that cannot promise batch invariance (no
// model.BatchInvariant) fails NewEngine with an error naming the mode, never runs without it;
// the same options start an engine on the CPU backend.
func TestDeterministicNeedsBatchInvariantBackend(t *testing.T) {
	be, cfg, w, tok := cpuDemo(t)
	opt := Options{ModelName: demo.Name, MaxNumSeqs: 2, MaxBatchedTokens: 64, MaxModelLen: 64, Deterministic: true}
	if _, err := NewEngine(cfg, samplerOnly{be, be}, w, tok, opt); err == nil || !strings.Contains(err.Error(), "deterministic") {
		t.Errorf("a backend without BatchInvariant: %v", err)
	}
	e, err := NewEngine(cfg, be, w, tok, opt)
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
}
