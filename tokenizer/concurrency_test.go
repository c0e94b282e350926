package tokenizer

import (
	"slices"
	"sync"
	"testing"
)

// TestConcurrentUse: a Tokenizer is shared by request goroutines; results
// must not depend on interleaving (run with -race to check the caches).
func TestConcurrentUse(t *testing.T) {
	texts := []string{benchText, "Hello, world!", "中文测试 😀", "<|begin_of_text|>hi<|eot_id|>", "  x  "}
	for _, name := range testNames {
		tok := loadTest(t, name)
		want := make([][]int, len(texts))
		for i, s := range texts {
			want[i], _ = tok.Encode(s, true)
		}
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for r := 0; r < 20; r++ {
					i := (g + r) % len(texts)
					got, err := tok.Encode(texts[i], true)
					if err != nil || !slices.Equal(got, want[i]) {
						t.Errorf("%s: concurrent Encode(%q) differs", name, texts[i])
						return
					}
					if _, err := tok.Decode(got, false); err != nil {
						t.Error(err)
						return
					}
				}
			}(g)
		}
		wg.Wait()
	}
}
