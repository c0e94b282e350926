package tokenizer

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Expected ids below come from HF tokenizers 0.23.2 on the same files.
func TestEncodeTable(t *testing.T) {
	cases := []struct {
		tok     string
		text    string
		special bool
		want    []int
	}{
		{"llama3", "", true, []int{}},
		{"llama3", " ", false, []int{220}},
		{"llama3", "\t", false, []int{197}},
		// ignore_merges: whole-vocab pre-tokens are not re-merged (merges alone
		// would give e.g. " jeho" -> [503 2701 78]).
		{"llama3", " jeho", false, []int{101503}},
		{"llama3", "lardan", false, []int{103084}},
		{"llama3", "Xin chào việc hợp nhiều", false, []int{55, 258, 523, 100988, 100769, 100827, 100937}},
		{"qwen3", " jeho", false, []int{502, 2636, 78}}, // qwen3 has no ignore_merges
		{"qwen3", "Xin chào việc hợp nhiều", false, []int{55, 258, 139548, 128289, 128319, 128271}},
		// Added tokens glued to text; specials are not split by BPE.
		{"llama3", "<unk> <pad> <|start_header_id|>assistant<|end_header_id|>\n\n", true,
			[]int{27, 3200, 29, 366, 13545, 29, 220, 128006, 78191, 128007, 271}},
		{"llama2", "", true, []int{1}},
		{"llama2", "", false, []int{}},
		{"llama2", " ", true, []int{1, 259}},
		{"llama2", "\t", false, []int{28705, 12}},
		{"llama2", "a", true, []int{1, 264}},
		// Prepend("▁") applies to each segment between added tokens.
		{"llama2", "<unk> <pad>", false, []int{0, 28705, 523, 9845, 28767}},
		{"qwen3", "", true, []int{}},
	}
	for _, c := range cases {
		tok := loadTest(t, c.tok)
		got, err := tok.Encode(c.text, c.special)
		if err != nil {
			t.Errorf("%s Encode(%q): %v", c.tok, c.text, err)
			continue
		}
		if d := diffIDs(tok, got, c.want); d != "" {
			t.Errorf("%s Encode(%q, %v): %s", c.tok, c.text, c.special, d)
		}
	}
}

func TestDecodeTable(t *testing.T) {
	cases := []struct {
		tok  string
		ids  []int
		skip bool
		want string
	}{
		{"llama3", nil, false, ""},
		{"llama2", []int{1}, false, "<s>"},
		{"llama2", []int{1}, true, ""},
		{"llama2", []int{1, 259}, false, "<s>  "},
		{"llama2", []int{0, 28705, 523, 9845, 28767}, true, " <pad>"},
		{"llama3", []int{128000, 9906}, true, "Hello"},
	}
	for _, c := range cases {
		tok := loadTest(t, c.tok)
		got, err := tok.Decode(c.ids, c.skip)
		if err != nil || got != c.want {
			t.Errorf("%s Decode(%v, %v) = %q, %v; want %q", c.tok, c.ids, c.skip, got, err, c.want)
		}
	}
}

func TestDecodeUnknownID(t *testing.T) {
	for _, name := range testNames {
		tok := loadTest(t, name)
		for _, id := range []int{-1, tok.VocabSize(), 1 << 30} {
			if _, err := tok.Decode([]int{1, id}, false); !errors.Is(err, ErrUnknownID) {
				t.Errorf("%s Decode(%d): err = %v, want ErrUnknownID", name, id, err)
			}
			if _, err := tok.NewStreamDecoder(false).Push(id); !errors.Is(err, ErrUnknownID) {
				t.Errorf("%s Push(%d): err = %v, want ErrUnknownID", name, id, err)
			}
		}
	}
}

func TestInvalidUTF8(t *testing.T) {
	tok := loadTest(t, "llama3")
	if _, err := tok.Encode("ok \xff\xfe", false); !errors.Is(err, ErrInvalidUTF8) {
		t.Fatalf("err = %v, want ErrInvalidUTF8", err)
	}
}

func TestAccessors(t *testing.T) {
	l3 := loadTest(t, "llama3")
	if got := l3.VocabSize(); got != 128256 {
		t.Errorf("llama3 VocabSize = %d", got)
	}
	if id, ok := l3.BOS(); !ok || id != 128000 {
		t.Errorf("llama3 BOS = %d, %v", id, ok)
	}
	if got := l3.EOS(); !slices.Equal(got, []int{128001}) {
		t.Errorf("llama3 EOS = %v", got)
	}
	if id, ok := l3.TokenID("Ġhello"); !ok || id != 24748 {
		t.Errorf("TokenID(Ġhello) = %d, %v", id, ok)
	}
	if s, ok := l3.TokenString(128009); !ok || s != "<|eot_id|>" {
		t.Errorf("TokenString(128009) = %q, %v", s, ok)
	}
	if !l3.IsSpecial(128009) || l3.IsSpecial(9906) {
		t.Error("IsSpecial wrong")
	}
	if _, ok := l3.Config()["chat_template"].(string); !ok {
		t.Error("Config lacks chat_template")
	}
	q := loadTest(t, "qwen3")
	if _, ok := q.BOS(); ok {
		t.Error("qwen3 has bos_token null, BOS should be absent")
	}
	if got := q.EOS(); !slices.Equal(got, []int{151645}) {
		t.Errorf("qwen3 EOS = %v", got)
	}
	if q.VocabSize() != 151669 {
		t.Errorf("qwen3 VocabSize = %d", q.VocabSize())
	}
	// <tool_call> is a non-special added token: kept when skipping specials.
	if q.IsSpecial(151657) {
		t.Error("<tool_call> should not be special")
	}
	l2 := loadTest(t, "llama2")
	if id, ok := l2.BOS(); !ok || id != 1 {
		t.Errorf("llama2 BOS = %d, %v", id, ok)
	}
	if got := l2.EOS(); !slices.Equal(got, []int{2}) {
		t.Errorf("llama2 EOS = %v", got)
	}
	if _, ok := l2.TokenString(-5); ok {
		t.Error("TokenString(-5) ok")
	}
}

// TestStreamHoldsIncomplete: a partial emoji must not be emitted early.
func TestStreamHoldsIncomplete(t *testing.T) {
	for _, name := range testNames {
		tok := loadTest(t, name)
		ids, _ := tok.Encode("a😀b 中文 𝔘", false)
		d := tok.NewStreamDecoder(false)
		var all strings.Builder
		for _, id := range ids {
			delta, err := d.Push(id)
			if err != nil {
				t.Fatal(err)
			}
			if strings.ContainsRune(delta, '\uFFFD') {
				t.Errorf("%s: delta %q contains U+FFFD", name, delta)
			}
			all.WriteString(delta)
		}
		all.WriteString(d.Flush())
		want, _ := tok.Decode(ids, false)
		if all.String() != want {
			t.Errorf("%s: stream %q != decode %q", name, all.String(), want)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	base := string(NewByteLevelDemo(nil).JSON())
	cases := []struct {
		name, json, want string
		is               error
	}{
		{"not json", "{", "malformed", ErrMalformed},
		{"no model", `{"added_tokens":[]}`, `"model"`, ErrMalformed},
		{"unigram", `{"model":{"type":"Unigram","vocab":[]}}`, `unsupported model type "Unigram"`, ErrUnsupported},
		{"wordpiece", `{"model":{"type":"WordPiece","vocab":{}}}`, `"WordPiece"`, ErrUnsupported},
		{"normalizer", strings.Replace(base, `"normalizer":null`, `"normalizer":{"type":"BertNormalizer"}`, 1), `unsupported normalizer type "BertNormalizer"`, ErrUnsupported},
		{"pretok", patchJSON(t, base, "pre_tokenizer", `{"type":"Whitespace"}`), `unsupported pre_tokenizer type "Whitespace"`, ErrUnsupported},
		{"pretok seq", patchJSON(t, base, "pre_tokenizer", `{"type":"Sequence","pretokenizers":[{"type":"Digits"}]}`), `unsupported pre_tokenizer type "Digits"`, ErrUnsupported},
		{"decoder", patchJSON(t, base, "decoder", `{"type":"WordPiece"}`), `unsupported decoder type "WordPiece"`, ErrUnsupported},
		{"post", patchJSON(t, base, "post_processor", `{"type":"Weird"}`), `unsupported post_processor type "Weird"`, ErrUnsupported},
		{"split behavior", patchJSON(t, base, "pre_tokenizer", `{"type":"Split","pattern":{"String":" "},"behavior":"Sideways"}`), `"pre_tokenizer.behavior"`, ErrMalformed},
		{"bad merge", strings.Replace(base, `"merges":[]`, `"merges":["a zz"]`, 1), `"model.merges"`, ErrMalformed},
		{"bad merge shape", strings.Replace(base, `"merges":[]`, `"merges":[["a"]]`, 1), `"model.merges"`, ErrMalformed},
		{"bad vocab", strings.Replace(base, `"vocab":{`, `"vocab":{"zz":"x",`, 1), `"model"`, ErrMalformed},
		{"bad regex", patchJSON(t, base, "pre_tokenizer", `{"type":"Split","pattern":{"Regex":"(("},"behavior":"Isolated"}`), `"pre_tokenizer.pattern"`, ErrMalformed},
		{"dropout", patchJSON(t, base, "model", `{"type":"BPE","dropout":0.1,"vocab":{},"merges":[]}`), `dropout`, ErrUnsupported},
		{"unk missing", patchJSON(t, base, "model", `{"type":"BPE","unk_token":"<unk>","vocab":{"a":0},"merges":[]}`), `"model.unk_token"`, ErrMalformed},
	}
	for _, c := range cases {
		_, err := FromJSON([]byte(c.json), nil)
		if err == nil || !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v; want %v containing %q", c.name, err, c.is, c.want)
		}
	}
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	demo := NewByteLevelDemo([]string{"<|begin_of_text|>", "<|end_of_text|>"})
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), demo.JSON(), 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tok.VocabSize() != 258 {
		t.Errorf("VocabSize = %d", tok.VocabSize())
	}
	if _, err := Load(t.TempDir()); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "no tokenizer.json") {
		t.Errorf("Load of an empty dir: err = %v", err)
	}
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "tokenizer.json.gz"), []byte("not gzip"), 0o644)
	if _, err := Load(bad); err == nil {
		t.Error("Load of a corrupt tokenizer.json.gz succeeded")
	}
}

func TestDemo(t *testing.T) {
	demo := NewByteLevelDemo([]string{"<|begin_of_text|>", "<|end_of_text|>", "", "<|end_of_text|>"})
	if demo.VocabSize() != 258 {
		t.Fatalf("VocabSize = %d", demo.VocabSize())
	}
	if id, ok := demo.BOS(); !ok || id != 256 {
		t.Errorf("BOS = %d, %v", id, ok)
	}
	if got := demo.EOS(); !slices.Equal(got, []int{257}) {
		t.Errorf("EOS = %v", got)
	}
	// GPT-2 order: "!" is id 0, space (mapped to "Ġ") comes after the printable bytes.
	if s, _ := demo.TokenString(0); s != "!" {
		t.Errorf("TokenString(0) = %q", s)
	}
	text := "<|begin_of_text|>Hi 😀\n"
	ids, err := demo.Encode(text, true)
	if err != nil {
		t.Fatal(err)
	}
	if ids[0] != 256 || len(ids) != 1+len("Hi 😀\n") {
		t.Errorf("ids = %v", ids)
	}
	if got, _ := demo.Decode(ids, false); got != text {
		t.Errorf("round trip = %q", got)
	}
	if got, _ := demo.Decode(ids, true); got != "Hi 😀\n" {
		t.Errorf("skip special = %q", got)
	}
	// HF tokenizers 0.23.2 loading demo.JSON() gives these ids.
	hf, _ := demo.Encode("<|begin_of_text|>Hi 😀 there\n", true)
	if want := []int{256, 39, 72, 220, 172, 253, 246, 222, 220, 83, 71, 68, 81, 68, 198}; !slices.Equal(hf, want) {
		t.Errorf("demo ids = %v, HF gives %v", hf, want)
	}
	// JSON round trip gives the same tokenizer.
	back, err := FromJSON(demo.JSON(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ids2, _ := back.Encode(text, true)
	if !slices.Equal(ids, ids2) {
		t.Errorf("after JSON round trip ids = %v, want %v", ids2, ids)
	}
	if _, err := demo.MarshalJSON(); err != nil {
		t.Error(err)
	}
}

// patchJSON replaces one top-level field of a tokenizer.json.
func patchJSON(t *testing.T, doc, key, value string) string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatal(err)
	}
	m[key] = json.RawMessage(value)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
