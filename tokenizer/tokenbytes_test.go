package tokenizer

import (
	"bytes"
	"testing"
)

// The bytes of a text's tokens, concatenated, are the text (what constrained decoding relies
// on), on byte-level (Llama 3, Qwen3) and SentencePiece byte-fallback (Llama 2) tokenizers,
// with multi-byte characters split across tokens; special tokens have no bytes.
func TestTokenBytesConcatenateToText(t *testing.T) {
	texts := []string{`{"name":"Zoë","age":42,"tags":["a b","c\nd"]}`, "  two  spaces\tand tab", "日本語のテキスト 🙂", "x"}
	for _, name := range testNames {
		tok := loadTest(t, name)
		for _, text := range texts {
			ids, err := tok.Encode(text, false)
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			for _, id := range ids {
				b, ok := tok.TokenBytes(id)
				if !ok {
					t.Fatalf("%s: token %d of %q has no bytes", name, id, text)
				}
				got = append(got, b...)
			}
			// SentencePiece encoders prepend a space marker to the first word.
			if !bytes.Equal(got, []byte(text)) && !bytes.Equal(got, []byte(" "+text)) {
				t.Errorf("%s: bytes of %q are %q", name, text, got)
			}
		}
		for _, id := range tok.EOS() {
			if tok.IsSpecial(id) {
				if _, ok := tok.TokenBytes(id); ok {
					t.Errorf("%s: special EOS %d has bytes", name, id)
				}
			}
		}
	}
}
