package tokenizer

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

var fuzzSeeds = []string{
	"", " ", "\t", "\n\n\n", "Hello, world!", "I'M DONE. they'll", "e\u0301 é",
	"Emoji: 😀 👍🏽 👨\u200d👩\u200d👧\u200d👦 🇺🇸", "中文测试：今天天气很好", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd",
	"<|begin_of_text|>hi<|eot_id|>", "<s>x</s><unk>", "<|im_start|>user\nhi<|im_end|>",
	"<|im_", "  <s >  ", "a\u00a0b\u3000c\u2028d\u200be\ufeff", "12345678901234567890",
	"\xff\xfe invalid", "\xe4\xb8", strings.Repeat("ab ", 100),
}

// FuzzEncodeDecode: no panics, ids in range, stream == Decode, and for the
// byte-level tokenizers Decode(Encode(s)) == s (for qwen3 only when s is
// already NFC, since it normalizes).
func FuzzEncodeDecode(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	toks := map[string]*Tokenizer{"demo": NewByteLevelDemo([]string{"<|begin_of_text|>", "<|end_of_text|>"})}
	for _, name := range testNames {
		toks[name] = loadTest(f, name)
	}
	// The same tokenizer without the byte-level fast path, as the reference
	// for encodeByteLevel.
	slow, err := FromJSON(toks["llama3"].JSON(), nil)
	if err != nil {
		f.Fatal(err)
	}
	slow.byteSplit = nil
	f.Fuzz(func(t *testing.T, s string) {
		for name, tok := range toks {
			ids, err := tok.Encode(s, true)
			if !utf8.ValidString(s) {
				if !errors.Is(err, ErrInvalidUTF8) {
					t.Fatalf("%s: invalid UTF-8 gave err %v", name, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s: Encode(%q): %v", name, s, err)
			}
			for _, id := range ids {
				if id < 0 || id >= tok.VocabSize() {
					t.Fatalf("%s: id %d out of range", name, id)
				}
			}
			got, err := tok.Decode(ids, false)
			if err != nil {
				t.Fatalf("%s: Decode: %v", name, err)
			}
			roundTrip := name == "llama3" || name == "demo" || (name == "qwen3" && norm.NFC.IsNormalString(s))
			if roundTrip && got != s {
				t.Fatalf("%s: Decode(Encode(%q)) = %q", name, s, got)
			}
			checkStream(t, tok, ids, false, name)
			checkStream(t, tok, ids, true, name)
			if name == "llama3" {
				ref, _ := slow.Encode(s, true)
				if !slices.Equal(ids, ref) {
					t.Fatalf("fast path %v != generic path %v for %q", ids, ref, s)
				}
			}
		}
	})
}

// FuzzLoad: malformed tokenizer.json must give an error, never a panic; what
// loads must encode and decode without panicking.
func FuzzLoad(f *testing.F) {
	demo := string(NewByteLevelDemo([]string{"<s>"}).JSON())
	f.Add(demo)
	f.Add(demo[:len(demo)/2])
	f.Add(`{}`)
	f.Add(`null`)
	f.Add(`[]`)
	f.Add(`{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]}}`)
	f.Add(`{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":[["a","b"]],"unk_token":"a","byte_fallback":true,"fuse_unk":true},"normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Replace","pattern":{"String":" "},"content":"▁"}]},"decoder":{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":1}]},"added_tokens":[{"id":3,"content":"<s>","special":true,"lstrip":true,"rstrip":true,"single_word":true}]}`)
	f.Add(`{"model":{"type":"BPE","vocab":{"a":-1},"merges":[]}}`)
	f.Add(`{"model":{"type":"BPE","vocab":{"a":0},"merges":["a"]}}`)
	f.Add(`{"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"pre_tokenizer":{"type":"Split","pattern":{"Regex":"\\s+(?!\\S)"},"behavior":"MergedWithNext","invert":true}}`)
	f.Fuzz(func(t *testing.T, data string) {
		tok, err := FromJSON([]byte(data), nil)
		if err != nil {
			if tok != nil {
				t.Fatal("non-nil tokenizer with error")
			}
			return
		}
		for _, s := range []string{"", "ab a b", "<s> ab▁ x", "😀"} {
			ids, err := tok.Encode(s, true)
			if err != nil {
				t.Fatalf("Encode(%q): %v", s, err)
			}
			for _, id := range ids {
				if id < 0 || id >= tok.VocabSize() {
					t.Fatalf("id %d out of range [0,%d)", id, tok.VocabSize())
				}
			}
			if _, err := tok.Decode(ids, false); err != nil {
				t.Fatalf("Decode(%v): %v", ids, err)
			}
			checkStream(t, tok, ids, false, "fuzz")
		}
	})
}
