package serve

import (
	"fmt"
	"sync"

	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/structured"
)

// Constraint is a request's structured-output constraint (constrained decoding): the output is
// held to Spec by masking, at every step, the tokens that would break it (structured.Grammar).
type Constraint struct {
	Spec structured.Spec
	// Param is the request field that set it, named by errors ("response_format",
	// "structured_outputs", "guided_json", ...).
	Param string
}

// constraints compiles and caches an engine's grammars over its tokenizer's vocabulary (built
// on first use: a vocabulary's bytes sorted once).
type constraints struct {
	once     sync.Once
	compiler *structured.Compiler
}

// grammar compiles p's constraint (cached by spec), or returns nil when it has none. A
// constraint that cannot be enforced is a KindInvalid error naming the field, the keyword or
// the limit, never ignored.
func (e *Engine) grammar(p *SamplingParams) (*structured.Grammar, error) {
	c := p.Constraint
	if c == nil {
		return nil, nil
	}
	switch {
	case e.tok == nil:
		return nil, errorf(KindInvalid, c.Param, "structured outputs need a tokenizer, and this model has none")
	case len(e.eos) == 0:
		// EOS is how a complete structure ends the output.
		return nil, errorf(KindInvalid, c.Param, "structured outputs need an end-of-sequence token, and this model has none")
	case !e.runner.MasksTokens():
		return nil, errorf(KindInvalid, c.Param, "structured outputs are not supported on the %s backend (it does not mask tokens)", e.backend.Name())
	case p.MinTokens > 0:
		// min_tokens bans EOS where the structure may require it.
		return nil, errorf(KindInvalid, "min_tokens", "min_tokens cannot be combined with structured outputs")
	case p.IgnoreEOS:
		return nil, errorf(KindInvalid, "ignore_eos", "ignore_eos cannot be combined with structured outputs")
	}
	e.constraints.once.Do(func() {
		tokens := min(e.tok.VocabSize(), e.cfg.VocabSize)
		eos := make([]int, 0, len(e.eos))
		for id := range e.eos {
			eos = append(eos, id)
		}
		v := structured.NewVocab(e.cfg.VocabSize, tokens, e.tok.TokenBytes, eos)
		e.constraints.compiler = structured.NewCompiler(v)
	})
	g, err := e.constraints.compiler.Compile(c.Spec)
	if err != nil {
		// Unsupported keywords, limits and invalid or unsatisfiable specs are all the client's.
		return nil, errorf(KindInvalid, c.Param, "%s: %v", c.Param, err)
	}
	return g, nil
}

// constrain gives sq's row its grammar state's allowed-token mask (shared, computed once per
// state).
func (sq *sequence) constrain(row *model.SampleRow) {
	if sq.matcher != nil {
		row.Allowed = sq.matcher.Mask()
	}
}

// advanceGrammar moves sq's grammar past tok. A token the grammar did not allow (only
// possible if no token was allowed) is an internal error.
func (sq *sequence) advanceGrammar(tok int, eos bool) error {
	if sq.matcher == nil {
		return nil
	}
	if !sq.matcher.Advance(tok) && !eos {
		return fmt.Errorf("constrained decoding: token %d left the grammar", tok)
	}
	return nil
}
