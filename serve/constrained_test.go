package serve

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/structured"
)

// samplerOnly is a backend that samples but does not declare model.TokenMasker (as CUDA
// today): the CPU backend seen through the two interfaces alone.
type samplerOnly struct {
	model.Backend
	model.DeviceSampler
}

// A constrained request on a backend whose sampler does not honour masks is refused naming
// the field, never run unconstrained; the same request runs on the CPU backend.
func TestConstraintNeedsTokenMasker(t *testing.T) {
	be := cpu.New(1)
	defer be.Close()
	cfg, w, tok, _, err := demo.Build(be)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
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
