package structured

import (
	"encoding/json"
	"math/rand/v2"
	"regexp"
	"testing"
	"time"
)

// Compiling any schema or regex never panics, stays within its limits in bounded time, and
// what compiles only lets a random model write outputs that match it (regexes checked by Go's
// regexp, schemas' outputs are JSON).
func FuzzCompile(f *testing.F) {
	for _, s := range testSchemas {
		f.Add(true, s)
	}
	for _, s := range []string{`[a-c]{2,5}(-[0-9]+)?é`, `(?i)yes|no`, `.*`, `\d{3}`, `(a|b)*c`, `^x$`, `[^a]`, `\pL+`, `{"type":"string","maxLength":300}`, `{"$ref":"#"}`, `{"type":["object","null"],"properties":{"a":{"anyOf":[true,{"type":"number"}]}}}`} {
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
