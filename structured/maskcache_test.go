package structured

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loraplex/loraplex/tokenizer"
)

// comparePaths follows a seeded random output of up to steps tokens through g and, at every
// step, computes the mask both ways: the full walk and the position cache. Wherever the cache
// gives a mask it must be the full walk's bit for bit. It returns how many steps the cache
// gave the mask, and how many masks it compared.
func comparePaths(t testing.TB, g *Grammar, rng *rand.Rand, maxSteps int) (cached, steps int) {
	t.Helper()
	v := g.v
	m := g.NewMatcher()
	full := make([]uint64, (v.size+63)/64)
	fast := make([]uint64, len(full))
	var out []byte
	for range maxSteps {
		steps++
		clear(full)
		clear(fast)
		m.r.walk(v, full, nil, MaxMaskWork)
		if _, _, ok := g.positionsWalk(m.r, fast); ok {
			cached++
			if !slices.Equal(full, fast) {
				for id := range v.size {
					if full[id/64]>>(id%64)&1 != fast[id/64]>>(id%64)&1 {
						t.Fatalf("after %q: token %d %q: full walk %v, position cache %v", out, id, v.bytes(id), full[id/64]>>(id%64)&1, fast[id/64]>>(id%64)&1)
					}
				}
			}
		}
		var allowed []int
		for id := range v.size {
			if full[id/64]>>(id%64)&1 != 0 && len(v.bytes(id)) > 0 {
				allowed = append(allowed, id)
			}
		}
		if len(allowed) == 0 {
			break
		}
		id := allowed[rng.IntN(len(allowed))]
		out = append(out, v.bytes(id)...)
		if !m.Advance(id) {
			t.Fatalf("allowed token %q left the grammar after %q", v.bytes(id), out)
		}
	}
	return cached, steps
}

// llamaVocab is Llama 3's 128,256-token vocabulary.
func llamaVocab(t testing.TB) *Vocab {
	t.Helper()
	llama, err := tokenizer.Load(filepath.Join("..", "testdata", "tokenizers", "llama3"))
	if err != nil {
		t.Fatal(err)
	}
	return NewVocab(128256, min(llama.VocabSize(), 128256), llama.TokenBytes, llama.EOS())
}

// A context-free grammar's mask from the position cache is the full walk's, bit for bit, at
// every step of random outputs of the test grammars and the recursive schemas, on the test
// vocabulary (byte tokens and tokens that cross JSON's structure) and on Llama 3's 128k; and
// the cache does give most of those masks.
func TestPositionMasksAreTheWalks(t *testing.T) {
	small, _ := testVocab()
	vocabs := []struct {
		name  string
		v     *Vocab
		seeds uint64
	}{{"test", small, 6}, {"llama3_128k", llamaVocab(t), 2}}
	var specs []Spec
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range testGrammars {
			if !yield(k) {
				return
			}
		}
	}) {
		specs = append(specs, Spec{Kind: EBNF, Text: testGrammars[name]})
	}
	for _, s := range recursiveSchemas {
		specs = append(specs, Spec{Kind: JSONSchema, Text: s})
	}
	for _, vc := range vocabs {
		steps, cached := 0, 0
		for i, spec := range specs {
			g, err := NewCompiler(vc.v).Compile(spec)
			if err != nil {
				t.Fatalf("%s: spec %d: %v", vc.name, i, err)
			}
			for seed := range vc.seeds {
				t.Run(fmt.Sprintf("%s/%d/%d", vc.name, i, seed), func(t *testing.T) {
					c, n := comparePaths(t, g, rand.New(rand.NewPCG(seed, uint64(i))), 40)
					cached, steps = cached+c, steps+n
				})
			}
		}
		t.Logf("%s: the position cache gave %d masks in %d steps", vc.name, cached, steps)
		if cached < steps/2 {
			t.Errorf("%s: the position cache gave %d masks in %d steps", vc.name, cached, steps)
		}
	}
}

// Where the full walk meets its limits (threads that multiply without merging), the position
// cache gives no mask that differs from it: it falls back to the walk.
func TestPositionMasksKeepTheWalksLimits(t *testing.T) {
	v, _ := testVocab()
	g, err := NewCompiler(v).Compile(Spec{Kind: EBNF, Text: "root::=expr\nexpr::=term((\"+\"|\"-\")term)*\nterm::=factor((\"*\"|\"/\")factor)*\nfactor::=[0-9]{1,3}expr\")\"|"})
	if err != nil {
		t.Fatal(err)
	}
	comparePaths(t, g, rand.New(rand.NewPCG(3, 3)), 14)
	m := g.NewMatcher()
	for range 12 {
		m.Mask()
		full := make([]uint64, (v.size+63)/64)
		m.r.walk(v, full, nil, MaxMaskWork)
		if !slices.Equal(full, m.Mask()) {
			t.Fatal("Mask differs from the full walk")
		}
		if !m.Advance('1') {
			break
		}
	}
}

// A state of more threads than maxPositionThreads takes the full walk without computing any
// position (a grammar of a thousand alternatives costs its compile and first mask no more
// than a walk each),
// and a position's walk stops at the budget it is given.
func TestPositionCacheIsBounded(t *testing.T) {
	v := llamaVocab(t)
	var alts []string
	for i := range 1500 {
		alts = append(alts, fmt.Sprintf("r%d", i))
	}
	text := "root ::= " + strings.Join(alts, " | ") + "\n"
	for i := range 1500 {
		text += fmt.Sprintf("r%d ::= \"%d\" [a-z]* \"x\"\n", i, i)
	}
	start := time.Now()
	g, err := NewCompiler(v).Compile(Spec{Kind: EBNF, Text: text})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("compile took %v", took)
	}
	known := len(g.positions)
	m := g.NewMatcher()
	start = time.Now()
	m.Mask()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("first mask took %v", took)
	}
	if len(g.positions) != known {
		t.Errorf("%d positions computed for a state of %d threads", len(g.positions)-known, len(m.r.threads))
	}
	j := compileGrammar(t, NewCompiler(v), "json")
	r := j.NewMatcher().r
	at := r.positionOf(r.threads[0])
	pm, learnt := r.positionWalk(v, at, 100)
	if learnt || pm.cost > 100+MaxParserThreads+len(r.threads) {
		t.Errorf("a position's walk with a budget of 100 visits: learnt %v, cost %d", learnt, pm.cost)
	}
}

// Compile learns the positions of the states near a grammar's start, so that a JSON string's
// first mask (~100 ms of position walks on 128k) is paid before the request joins a batch:
// after `{"a` every thread's position is known, and the first output's masks from them are
// the full walk's.
func TestCompileLearnsTheFirstPositions(t *testing.T) {
	v := llamaVocab(t)
	g := compileGrammar(t, NewCompiler(v), "json")
	r := g.NewMatcher().r
	if !r.advance([]byte(`{"a`)) {
		t.Fatal(`{"a left the grammar`)
	}
	for _, th := range r.threads {
		if g.positions[r.positionOf(th)] == nil {
			t.Errorf("position %+v not learnt at compile (%d learnt)", r.positionOf(th), len(g.positions))
		}
	}
	if cached, steps := comparePaths(t, g, rand.New(rand.NewPCG(5, 5)), 12); cached == 0 {
		t.Errorf("the position cache gave no mask in %d steps", steps)
	}
}
