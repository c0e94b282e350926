package tokenizer

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/dlclark/regexp2"
)

func regexSpans(t testing.TB, re, s string) []span {
	p := &pattern{re: regexp2.MustCompile(re, regexp2.None)}
	return p.regexMatches(s)
}

func checkFastSplit(t testing.TB, s string) {
	for _, c := range []struct {
		re        string
		maxDigits int
	}{{llama3Pattern, 3}, {qwenPattern, 1}, {gpt2Pattern, 0}} {
		want := regexSpans(t, c.re, s)
		got := (&pattern{fastAt: fastMatcher(c.re)}).matches(s)
		if !slices.Equal(got, want) {
			t.Fatalf("maxDigits=%d %q:\n got %v\nwant %v", c.maxDigits, s, got, want)
		}
	}
}

// TestFastSplitMatchesRegex compares the hand-written scanner with regexp2 on
// every golden and extra text.
func TestFastSplitMatchesRegex(t *testing.T) {
	texts := append([]string{}, fuzzSeeds...)
	texts = append(texts, "'s'S'll'LL're'Ve'd'M'x 'sup", " \n \n  x", "  \t x", "'re're 'll'l 've'v 'Re", " 'x ''s", "a  ", "1234567 ½²", "\r\n\r\n  \r", " !!\n\n", "x  \u00a0y")
	for _, name := range testNames {
		if g := loadGoldenIfPresent(name); g != nil {
			for _, c := range g.Cases {
				texts = append(texts, c.Text)
			}
		}
		for _, c := range loadExtra(t, name).Encode {
			texts = append(texts, c.Text)
		}
	}
	for _, s := range texts {
		if validUTF8(s) { // Encode rejects the rest before splitting
			checkFastSplit(t, s)
		}
	}
}

func FuzzFastSplit(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Add("'s'S'll'LL're'Ve'd'M'x 'sup \n \n  x\r\n 123456")
	f.Fuzz(func(t *testing.T, s string) {
		if !validUTF8(s) {
			return
		}
		checkFastSplit(t, s)
	})
}

// ByteLevel with GPT-2's regex (the demo's pre-tokenizer) encodes through the fast path exactly
// as through the general one: pre-tokenize with regexp2, then run the model word by word.
func TestGPT2FastPathEncodesLikeGeneralPath(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "demo", "assets", "model", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	fast, err := FromJSON(raw, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fast.byteSplit == nil {
		t.Fatal("the demo tokenizer does not take the fast path")
	}
	general, _ := FromJSON(raw, nil)
	general.byteSplit = nil
	general.pre = preByteLevel{useRegex: true}
	gpt2Split().pat.fastAt = nil
	defer func() { gpt2Split().pat.fastAt = fastMatcher(gpt2Pattern) }()
	texts := append([]string{benchText, "'s'S'll 're 've'd'M  \n\n\t x  ", "  trailing  "}, fuzzSeeds...)
	for _, s := range texts {
		if !validUTF8(s) {
			continue
		}
		want, err1 := general.Encode(s, false)
		got, err2 := fast.Encode(s, false)
		if err1 != nil || err2 != nil || !slices.Equal(got, want) {
			t.Fatalf("%q: fast %v (%v), general %v (%v)", s, got, err2, want, err1)
		}
	}
}
