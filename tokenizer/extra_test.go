package tokenizer

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Extra goldens from testdata/gen_extra.py (HF tokenizers): ~600 random and
// adversarial texts per tokenizer, 600 random id sequences to decode (byte
// tokens forming invalid UTF-8, specials, ...), and the same again with added
// tokens using the lstrip / rstrip / single_word / normalized flags.

type extraEncode struct {
	Text       string `json:"text"`
	IDsSpecial []int  `json:"ids_special"`
	IDsPlain   []int  `json:"ids_plain"`
}

type extraDecode struct {
	IDs         []int  `json:"ids"`
	Decoded     string `json:"decoded"`
	DecodedSkip string `json:"decoded_skip"`
}

type extraFile struct {
	Version     string            `json:"tokenizers_version"`
	Encode      []extraEncode     `json:"encode"`
	Decode      []extraDecode     `json:"decode"`
	FlagsAdded  []json.RawMessage `json:"flags_added_tokens"`
	FlagsEncode []extraEncode     `json:"flags_encode"`
	FlagsDecode []extraDecode     `json:"flags_decode"`
}

func loadExtra(t *testing.T, name string) *extraFile {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "extra", name+".json.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var x extraFile
	if err := json.NewDecoder(zr).Decode(&x); err != nil {
		t.Fatal(err)
	}
	return &x
}

// withAddedTokens rebuilds tok's tokenizer.json with a different added_tokens list.
func withAddedTokens(t *testing.T, tok *Tokenizer, added []json.RawMessage) *Tokenizer {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(tok.JSON(), &m); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(added)
	m["added_tokens"] = b
	js, _ := json.Marshal(m)
	t2, err := FromJSON(js, nil)
	if err != nil {
		t.Fatal(err)
	}
	return t2
}

func checkExtra(t *testing.T, tok *Tokenizer, enc []extraEncode, dec []extraDecode) (int, int) {
	t.Helper()
	fails := 0
	for i, c := range enc {
		for _, v := range []struct {
			special bool
			want    []int
		}{{true, c.IDsSpecial}, {false, c.IDsPlain}} {
			got, err := tok.Encode(c.Text, v.special)
			if err != nil {
				t.Fatalf("encode %d %q: %v", i, c.Text, err)
			}
			if d := diffIDs(tok, got, v.want); d != "" {
				fails++
				if fails < 10 {
					t.Errorf("encode %d %q (special=%v): %s", i, c.Text, v.special, d)
				}
			}
		}
	}
	for i, c := range dec {
		for _, v := range []struct {
			skip bool
			want string
		}{{false, c.Decoded}, {true, c.DecodedSkip}} {
			got, err := tok.Decode(c.IDs, v.skip)
			if err != nil || got != v.want {
				fails++
				if fails < 10 {
					toks := make([]string, len(c.IDs))
					for j, id := range c.IDs {
						toks[j], _ = tok.TokenString(id)
					}
					t.Errorf("decode %d %v %q (skip=%v) = %q, %v; want %q", i, c.IDs, toks, v.skip, got, err, v.want)
				}
			}
			checkStream(t, tok, c.IDs, v.skip, fmt.Sprintf("decode case %d", i))
		}
	}
	return fails, 2 * (len(enc) + len(dec))
}

func TestExtraGolden(t *testing.T) {
	for _, name := range testNames {
		t.Run(name, func(t *testing.T) {
			x := loadExtra(t, name)
			tok := loadTest(t, name)
			fails, n := checkExtra(t, tok, x.Encode, x.Decode)
			t.Logf("%s: %d/%d checks match HF %s", name, n-fails, n, x.Version)
			tok2 := withAddedTokens(t, tok, x.FlagsAdded)
			fails, n = checkExtra(t, tok2, x.FlagsEncode, x.FlagsDecode)
			t.Logf("%s with flagged added tokens: %d/%d checks match", name, n-fails, n)
		})
	}
}
