package toolcall

import (
	"strings"
	"testing"

	"github.com/loraplex/loraplex/structured"
)

// BenchmarkStream is the parser's cost per output byte, fed in 4-byte pieces as tokens come.
func BenchmarkStream(b *testing.B) {
	out := strings.Repeat("Some text before the calls. ", 8) + strings.Repeat(parseCases[1].output, 4)
	f := lookup(b, "hermes")
	b.SetBytes(int64(len(out)))
	for b.Loop() {
		s := f.NewStream(0)
		for i := 0; i < len(out); i += 4 {
			s.Feed(out[i:min(i+4, len(out))])
		}
		s.Finish()
	}
}

// BenchmarkForceCompile is the compile time of a forced call over two tools (a fresh compiler
// each time: the engine caches a compiled grammar by spec).
func BenchmarkForceCompile(b *testing.B) {
	v, _ := byteVocab()
	spec := lookup(b, "hermes").Force(forceTools, false)
	for b.Loop() {
		if _, err := structured.NewCompiler(v).Compile(spec); err != nil {
			b.Fatal(err)
		}
	}
}
