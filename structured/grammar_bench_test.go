package structured

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/tokenizer"
)

// benchVocabs are the demo model's 4,096-token vocabulary and Llama 3's 128,256.
func benchVocabs(b *testing.B) []struct {
	name string
	v    *Vocab
} {
	be := cpu.New(1)
	defer be.Close()
	cfg, w, demoTok, _, err := demo.Build(be)
	if err != nil {
		b.Fatal(err)
	}
	w.Close()
	llama, err := tokenizer.Load(filepath.Join("..", "testdata", "tokenizers", "llama3"))
	if err != nil {
		b.Fatal(err)
	}
	return []struct {
		name string
		v    *Vocab
	}{
		{"demo", NewVocab(cfg.VocabSize, min(demoTok.VocabSize(), cfg.VocabSize), demoTok.TokenBytes, demoTok.EOS())},
		{"llama3_128k", NewVocab(128256, min(llama.VocabSize(), 128256), llama.TokenBytes, llama.EOS())},
	}
}

// timeMasks walks ids from a fresh matcher of g and returns the time its Mask calls took (the
// walk itself untimed): cold when the caller has dropped g's cached masks, warm otherwise.
func timeMasks(g *Grammar, ids []int) time.Duration {
	var masked time.Duration
	m := g.NewMatcher()
	for _, id := range ids {
		start := time.Now()
		m.Mask()
		masked += time.Since(start)
		m.Advance(id)
	}
	return masked
}

// benchColdMasks times the masks along ids three cold ways, per step and the slowest step
// (the average hides that one state, a JSON string's, costs nearly all): mask_cold_walk with
// every mask a full walk and every mask dropped first (the walk before the position cache),
// mask_first_lazy with masks and positions dropped (a grammar's first output before compile
// learnt positions), mask_first the same after the positions compile learns (their learning
// untimed per step, reported as ns/learn: it is part of compile), mask_cold with the
// state masks dropped and the positions kept (a new state of a grammar already in use).
// report adds mask_cold's own metrics.
func benchColdMasks(b *testing.B, name string, g *Grammar, ids []int, report func(b *testing.B, perStep float64)) {
	for _, way := range []struct {
		name                   string
		walk, positions, learn bool
	}{{"mask_cold_walk", true, false, false}, {"mask_first_lazy", false, false, false}, {"mask_first", false, false, true}, {"mask_cold", false, true, false}} {
		b.Run(name+"/"+way.name, func(b *testing.B) {
			g.fullWalks = way.walk
			defer func() { g.fullWalks = false }()
			timeMasks(g, ids) // the positions, for mask_cold
			var masked, slowest, learning time.Duration
			for b.Loop() {
				g.drop(!way.positions)
				if way.learn && g.cfg != nil { // a DFA has no positions
					start := time.Now()
					g.learnPositions()
					learning += time.Since(start)
				}
				m := g.NewMatcher()
				for _, id := range ids {
					start := time.Now()
					m.Mask()
					took := time.Since(start)
					masked, slowest = masked+took, max(slowest, took)
					m.Advance(id)
				}
			}
			perStep := float64(masked.Nanoseconds()) / float64(b.N*len(ids))
			b.ReportMetric(perStep, "ns/step")
			b.ReportMetric(float64(slowest.Nanoseconds()), "ns/slowest_step")
			if way.learn {
				b.ReportMetric(float64(learning.Nanoseconds())/float64(b.N), "ns/learn")
			}
			if way.name == "mask_cold" {
				report(b, perStep)
			}
		})
	}
}

// benchWalk is a seeded random output of up to steps tokens through g (uniform among the
// allowed tokens, EOS only when nothing else is allowed), as token ids.
func benchWalk(g *Grammar, v *Vocab, steps int) []int {
	rng := rand.New(rand.NewPCG(9, 9))
	m := g.NewMatcher()
	var ids []int
	for range steps {
		mask := m.Mask()
		var allowed []int
		for id := range v.size {
			if mask[id/64]>>(id%64)&1 != 0 && len(v.bytes(id)) > 0 {
				allowed = append(allowed, id)
			}
		}
		if len(allowed) == 0 {
			break
		}
		id := allowed[rng.IntN(len(allowed))]
		ids = append(ids, id)
		m.Advance(id)
	}
	return ids
}

// BenchmarkGrammar is what a context-free grammar costs (EBNF: the pushdown recognizer), on
// the demo's and Llama 3's vocabularies: compile (parse and check), and the token mask per
// decode step along a 32-token random output, cold (every state new, the grammar's positions
// known from an earlier output: maskcache.go), cold_walk (every state new, each mask the full
// walk of the vocabulary against the parser threads: before the position cache), first
// (nothing known: positions learnt on the way) and warm (the same states again: the state
// key and a cache lookup). cold_vs_dfa is the cold step's cost over a DFA constraint's
// new-state mask (json_object, along its own random output) measured in the same run;
// max_work the most thread visits a full walk along the output made.
func BenchmarkGrammar(b *testing.B) {
	const steps = 32
	for _, bv := range benchVocabs(b) {
		v := bv.v
		// A DFA's new-state mask, the reference for the ratio.
		dfa, err := NewCompiler(v).Compile(Spec{Kind: JSONObject})
		if err != nil {
			b.Fatal(err)
		}
		dfaIDs := benchWalk(dfa, v, steps)
		var dfaMasked time.Duration
		dfaSteps := 0
		for range 5 {
			dfa.dropMasks()
			dfaMasked += timeMasks(dfa, dfaIDs)
			dfaSteps += len(dfaIDs)
		}
		dfaStep := float64(dfaMasked.Nanoseconds()) / float64(dfaSteps)
		for _, name := range []string{"arith", "json"} {
			text := testGrammars[name]
			if name == "json" {
				// Objects one after another, so that a random walk does not end at the
				// first "}".
				text = strings.Replace(text, "root   ::= object", "root   ::= (object ws)+", 1)
			}
			spec := Spec{Kind: EBNF, Text: text}
			b.Run(fmt.Sprintf("%s/%s/compile", bv.name, name), func(b *testing.B) {
				var elems int
				for b.Loop() {
					g, err := NewCompiler(v).Compile(spec)
					if err != nil {
						b.Fatal(err)
					}
					elems = g.States()
				}
				b.ReportMetric(float64(elems), "elements")
			})
			g, err := NewCompiler(v).Compile(spec)
			if err != nil {
				b.Fatal(err)
			}
			ids := benchWalk(g, v, steps)
			benchColdMasks(b, fmt.Sprintf("%s/%s", bv.name, name), g, ids, func(b *testing.B, perStep float64) {
				m := g.NewMatcher()
				most := 0
				for _, id := range ids {
					mask := make([]uint64, (v.size+63)/64)
					m.r.walk(v, mask, nil, MaxMaskWork)
					most = max(most, MaxMaskWork-m.r.p.budget)
					m.Advance(id)
				}
				b.ReportMetric(float64(most), "max_work")
				b.ReportMetric(perStep/dfaStep, "cold_vs_dfa")
			})
			b.Run(fmt.Sprintf("%s/%s/mask_warm", bv.name, name), func(b *testing.B) {
				m := g.NewMatcher()
				for _, id := range ids {
					m.Mask()
					m.Advance(id)
				}
				var masked time.Duration
				for b.Loop() {
					masked += timeMasks(g, ids)
				}
				b.ReportMetric(float64(masked.Nanoseconds())/float64(b.N*len(ids)), "ns/step")
			})
		}
	}
}

// treeNode is a tree node's schema whose children are children (a schema).
func treeNode(children string) string {
	return `{"type":"object","properties":{"label":{"type":"string"},"weight":{"type":"number"},"children":{"type":"array","items":` +
		children + `,"maxItems":3}},"required":["label","weight","children"],"additionalProperties":false}`
}

// BenchmarkRecursiveSchema is what a recursive JSON schema costs (a tree of nodes through
// $defs, compiled to a grammar for the pushdown recognizer) against a comparable regular one
// (the same node unrolled 3 levels deep, leaves without children, compiled to a DFA), on the
// demo's and Llama 3's vocabularies: compile, and the token mask per decode step along the
// same 32 tokens (a seeded random output of the unrolled schema, which the recursive one
// allows too), cold, cold_walk, first and warm as in BenchmarkGrammar (the unrolled schema is
// a DFA: its three cold ways are one).
func BenchmarkRecursiveSchema(b *testing.B) {
	const steps = 32
	unrolled := `{"type":"object","properties":{"label":{"type":"string"},"weight":{"type":"number"},"children":{"type":"array","maxItems":0}},"required":["label","weight","children"],"additionalProperties":false}`
	for range 3 {
		unrolled = treeNode(unrolled)
	}
	schemas := []struct{ name, text string }{
		{"recursive", `{"$defs":{"node":` + treeNode(`{"$ref":"#/$defs/node"}`) + `},"$ref":"#/$defs/node"}`},
		{"unrolled_3", unrolled},
	}
	for _, bv := range benchVocabs(b) {
		v := bv.v
		dfa, err := NewCompiler(v).Compile(Spec{Kind: JSONSchema, Text: unrolled})
		if err != nil {
			b.Fatal(err)
		}
		ids := benchWalk(dfa, v, steps)
		for _, s := range schemas {
			spec := Spec{Kind: JSONSchema, Text: s.text}
			b.Run(fmt.Sprintf("%s/%s/compile", bv.name, s.name), func(b *testing.B) {
				var states int
				for b.Loop() {
					g, err := NewCompiler(v).Compile(spec)
					if err != nil {
						b.Fatal(err)
					}
					states = g.States()
				}
				b.ReportMetric(float64(states), "states")
			})
			g, err := NewCompiler(v).Compile(spec)
			if err != nil {
				b.Fatal(err)
			}
			m := g.NewMatcher()
			for _, id := range ids {
				if !m.Advance(id) {
					b.Fatalf("%s does not allow the unrolled schema's output", s.name)
				}
			}
			benchColdMasks(b, fmt.Sprintf("%s/%s", bv.name, s.name), g, ids, func(b *testing.B, _ float64) {
				b.ReportMetric(float64(len(ids)), "steps")
			})
			b.Run(fmt.Sprintf("%s/%s/mask_warm", bv.name, s.name), func(b *testing.B) {
				timeMasks(g, ids)
				var masked time.Duration
				for b.Loop() {
					masked += timeMasks(g, ids)
				}
				b.ReportMetric(float64(masked.Nanoseconds())/float64(b.N*len(ids)), "ns/step")
			})
		}
	}
}
