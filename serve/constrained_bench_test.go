package serve

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/internal/decodebench"
	"github.com/loraplex/loraplex/structured"
	"github.com/loraplex/loraplex/tokenizer"
)

// benchMaxTokens is few enough that decodebench.Schema's outputs can hardly end sooner.
const (
	benchMaxTokens = 16
	// benchGrammar is decodebench.Schema's shape as a context-free grammar, recursive through arrays
	// (the pushdown recognizer rather than a DFA).
	benchGrammar = `root  ::= "{\"text\":" value ",\"n\":" [0-9]+ "}"
value ::= "\"" [a-zA-Z0-9 ]{200} "\"" | "[" value ("," value)* "]"`
)

// BenchmarkConstrainedDecode is end-to-end decode throughput on the demo model (CPU backend):
// batch requests of benchMaxTokens tokens at once, free, held to decodebench.Schema (a DFA) or to
// benchGrammar (a context-free grammar). tok/s is the figure to compare: vs_free is the
// constrained tok/s over the free run's at the same batch, in the same run.
func BenchmarkConstrainedDecode(b *testing.B) {
	e, prompt := benchDemoEngine(b, false)
	constraints := []struct {
		name string
		spec *structured.Spec
	}{
		{"free", nil},
		{"json_schema", &structured.Spec{Kind: structured.JSONSchema, Text: decodebench.Schema}},
		{"grammar", &structured.Spec{Kind: structured.EBNF, Text: benchGrammar}},
	}
	for _, batch := range []int{1, 64} {
		var free float64
		for _, c := range constraints {
			b.Run(fmt.Sprintf("%s/batch=%d", c.name, batch), func(b *testing.B) {
				var con *Constraint
				if c.spec != nil {
					con = &Constraint{Spec: *c.spec, Param: "bench"}
				}
				tps := benchDecode(b, e, prompt, batch, con)
				if c.spec == nil {
					free = tps
				} else if free > 0 {
					b.ReportMetric(tps/free, "vs_free")
				}
			})
		}
	}
}

// BenchmarkDeterministicDecode is the same decode throughput (free requests) with and without
// deterministic mode (Options.Deterministic): the CPU's price for batch invariance, its 1-row
// product kernel for every row.
func BenchmarkDeterministicDecode(b *testing.B) {
	for _, deterministic := range []bool{false, true} {
		e, prompt := benchDemoEngine(b, deterministic)
		for _, batch := range []int{1, 64} {
			b.Run(fmt.Sprintf("deterministic=%v/batch=%d", deterministic, batch), func(b *testing.B) { benchDecode(b, e, prompt, batch, nil) })
		}
	}
}

// benchDemoEngine serves the demo model on the CPU backend for the decode benchmarks.
func benchDemoEngine(b *testing.B, deterministic bool) (*Engine, []int) {
	be, cfg, w, tok := cpuDemo(b)
	e, err := NewEngine(cfg, be, w, tok, Options{ModelName: demo.Name, MaxNumSeqs: 64, MaxBatchedTokens: 2048, MaxModelLen: 256, Deterministic: deterministic})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.Close)
	prompt, err := tok.Encode("func main() {", false)
	if err != nil {
		b.Fatal(err)
	}
	return e, prompt
}

// benchDecode generates batch requests of benchMaxTokens tokens at once (held to c when not
// nil) round after round (decodebench.TokensPerSecond), reports tok/s and returns it. The
// first round (not timed) compiles the schema and computes the masks of the states it visits:
// BenchmarkCompile measures that cost; this measures the steady state.
func benchDecode(b *testing.B, e *Engine, prompt []int, batch int, c *Constraint) float64 {
	tps := decodebench.TokensPerSecond(b, batch, new(uint64), func(s uint64) decodebench.Wait {
		p := SamplingParams{MaxTokens: benchMaxTokens, Temperature: 1, Seed: &s, Constraint: c}
		st, err := e.Generate(context.Background(), Request{Model: demo.Name, Prompt: prompt, Params: p})
		if err != nil {
			b.Fatal(err)
		}
		return func() (int, string, error) {
			ev, err := st.Collect(context.Background())
			return len(ev.Tokens), ev.Finish, err
		}
	})
	b.ReportMetric(tps, "tok/s")
	return tps
}

// BenchmarkConstrainedSamplingPath is the sampling cost of a decode step on Llama 3's
// 128,256-token vocabulary: building the rows (a cached mask lookup per constrained row) and
// the CPU backend's Sample with the masks applied, free or constrained, at batch 1 and 64.
func BenchmarkConstrainedSamplingPath(b *testing.B) {
	tok, err := tokenizer.Load(filepath.Join("..", "testdata", "tokenizers", "llama3"))
	if err != nil {
		b.Fatal(err)
	}
	const vocab = 128256
	eos := tok.EOS()
	v := structured.NewVocab(vocab, min(tok.VocabSize(), vocab), tok.TokenBytes, eos)
	g, err := structured.NewCompiler(v).Compile(structured.Spec{Kind: structured.JSONSchema, Text: decodebench.Schema})
	if err != nil {
		b.Fatal(err)
	}
	// A state inside the string: the widest mask (almost every token allowed).
	m := g.NewMatcher()
	for _, t := range []string{`{"`, `text`, `":"`, `hello`} {
		ids, _ := tok.Encode(t, false)
		for _, id := range ids {
			m.Advance(id)
		}
	}
	if m.Done() {
		b.Fatal("prefix left the grammar")
	}
	m.Mask() // computed once per state and cached: the steady state is a lookup

	be := cpu.New(1)
	defer be.Close()
	for _, n := range []int{1, 64} {
		for _, constrained := range []bool{false, true} {
			name := fmt.Sprintf("free/batch=%d", n)
			if constrained {
				name = fmt.Sprintf("json_schema/batch=%d", n)
			}
			b.Run(name, func(b *testing.B) {
				e := &Engine{eos: map[int]bool{eos[0]: true}}
				e.stepSeq = stepSequences(n, vocab)
				for _, sq := range e.stepSeq {
					sq.params.MinTokens = 0
					if constrained {
						sq.matcher = m
					}
				}
				benchSampleStep(b, be, e, n, vocab)
			})
		}
	}
}
