package structured

import (
	"encoding/json"
	"math/rand/v2"
	"regexp"
	"slices"
	"testing"
	"time"
)

// Compiling any schema or regex never panics, stays within its limits in bounded time, and
// what compiles only lets a random model write outputs that match it (regexes checked by Go's
// regexp, schemas' outputs are JSON).
func FuzzCompile(f *testing.F) {
	for _, s := range append(slices.Clone(testSchemas), recursiveSchemas...) {
		f.Add(true, s)
	}
	for _, s := range []string{`[a-c]{2,5}(-[0-9]+)?é`, `(?i)yes|no`, `.*`, `\d{3}`, `(a|b)*c`, `^x$`, `[^a]`, `\pL+`, `{"type":"string","maxLength":300}`, `{"$ref":"#"}`, `{"anyOf":[{"type":"null"},{"type":"array","items":{"$ref":"#"}}]}`, `{"type":"object","properties":{"a":{"$ref":"#"}},"required":["a"]}`, `{"type":["object","null"],"properties":{"a":{"anyOf":[true,{"type":"number"}]}}}`} {
		f.Add(false, s)
		f.Add(true, s)
	}
	v, eos := testVocab()
	f.Fuzz(func(t *testing.T, schema bool, text string) {
		c := NewCompiler(v)
		spec := Spec{Kind: Regex, Text: text}
		if schema {
			spec.Kind = JSONSchema
		}
		start := time.Now()
		g, err := c.Compile(spec)
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("compile took %v", took)
		}
		if err != nil {
			return
		}
		var re *regexp.Regexp
		if !schema {
			if re, err = regexp.Compile(`^(?:` + text + `)$`); err != nil {
				return
			}
		}
		rng := rand.New(rand.NewPCG(1, 1))
		for range 5 {
			out, ok := generate(t, g, v, eos, rng, 200)
			if !ok {
				continue
			}
			if schema && !json.Valid([]byte(out)) {
				t.Fatalf("schema %s: output %q is not JSON", text, out)
			}
			if re != nil && !re.MatchString(out) {
				t.Fatalf("regex %s: output %q does not match", text, out)
			}
		}
	})
}

// Parsing any grammar text never panics and fails or compiles in bounded time; what compiles
// only lets a random model write outputs the recognizer accepts, its masks from the position
// cache (learnt at compile or by the masks) are the full walk's, and the recognizer takes any
// bytes.
func FuzzGrammar(f *testing.F) {
	for _, g := range testGrammars {
		f.Add(g, "1+(2*3)")
	}
	for _, s := range []string{`root ::= "a" | "b"`, `root ::= [^"\\]* "\x41\u00e9"`, `root ::= x{2,}` + "\nx ::= .", `root ::= (("a")?){0,3}`, "root ::= \"a\" # c\n  | b\nb ::= [a-c-]+", `root ::= root`, `root ::= "\u"`, `r ::= ((`} {
		f.Add(s, "aa")
	}
	v, eos := testVocab()
	f.Fuzz(func(t *testing.T, text, input string) {
		c := NewCompiler(v)
		start := time.Now()
		g, err := c.Compile(Spec{Kind: EBNF, Text: text})
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("compile took %v", took)
		}
		if err != nil {
			return
		}
		g.Matches([]byte(input))
		// The position cache's masks are the full walk's (maskcache.go), from the positions
		// compile learnt and from positions learnt by the masks themselves.
		comparePaths(t, g, rand.New(rand.NewPCG(2, 2)), 20)
		g.drop(true)
		comparePaths(t, g, rand.New(rand.NewPCG(2, 2)), 20)
		rng := rand.New(rand.NewPCG(1, 1))
		for range 2 {
			out, ok := generate(t, g, v, eos, rng, 40)
			if ok && !g.Matches([]byte(out)) {
				t.Fatalf("grammar %q: output %q does not match", text, out)
			}
		}
	})
}
