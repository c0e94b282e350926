package tokenizer

import (
	"strings"
	"testing"
)

// benchText is a few KB of mixed prose, code, numbers and non-Latin text.
var benchText = strings.Repeat(`The quick brown fox jumps over the lazy dog. It's 3.14159 o'clock; we'll see 1,000,000 stars.
func main() {
	for i := 0; i < 10; i++ { fmt.Println("hi", i*2) }
}
Unicode: café naïve résumé Zürich — 中文测试：今天天气很好。 Привет, мир! 😀 👍🏽
`, 12)

func benchEncode(b *testing.B, name string, cached bool) {
	tok := loadTest(b, name)
	b.SetBytes(int64(len(benchText)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !cached {
			tok.model.cache.reset()
			tok.rawCache.reset()
		}
		if _, err := tok.Encode(benchText, false); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	for _, name := range testNames {
		b.Run(name, func(b *testing.B) { benchEncode(b, name, true) })
		b.Run(name+"/nocache", func(b *testing.B) { benchEncode(b, name, false) })
	}
}

func BenchmarkDecode(b *testing.B) {
	tok := loadTest(b, "llama3")
	ids, _ := tok.Encode(benchText, false)
	b.SetBytes(int64(len(benchText)))
	for i := 0; i < b.N; i++ {
		if _, err := tok.Decode(ids, false); err != nil {
			b.Fatal(err)
		}
	}
}

// reset empties the cache, so a benchmark measures encoding rather than cache hits.
func (c *wordCache) reset() {
	c.mu.Lock()
	c.m = nil
	c.mu.Unlock()
}
