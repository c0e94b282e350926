package tokenizer

import (
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Goldens from testdata/gen_variants.py: the real tokenizers with components
// swapped for ones the three files do not use (Metaspace, Lowercase, NFKC,
// NFD, Strip, regex Replace, every Split behaviour and invert, GPT-2 regex,
// Bert/Template post-processors, unk without fusing, no decoder).

type variantFile struct {
	Version  string `json:"tokenizers_version"`
	Variants []struct {
		Name   string                     `json:"name"`
		Base   string                     `json:"base"`
		Patch  map[string]json.RawMessage `json:"patch"`
		Encode []extraEncode              `json:"encode"`
		Decode []extraDecode              `json:"decode"`
	} `json:"variants"`
}

// applyPatch mirrors gen_variants.py's apply_patch.
func applyPatch(t *testing.T, doc []byte, patch map[string]json.RawMessage) []byte {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	var model map[string]json.RawMessage
	if err := json.Unmarshal(m["model"], &model); err != nil {
		t.Fatal(err)
	}
	for k, v := range patch {
		if mk, ok := strings.CutPrefix(k, "model."); ok {
			model[mk] = v
		} else {
			m[k] = v
		}
	}
	m["model"], _ = json.Marshal(model)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestVariantGolden(t *testing.T) {
	f, err := os.Open(filepath.Join("testdata", "variants.json.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var vf variantFile
	if err := json.NewDecoder(zr).Decode(&vf); err != nil {
		t.Fatal(err)
	}
	for _, v := range vf.Variants {
		t.Run(v.Name, func(t *testing.T) {
			base := loadTest(t, v.Base)
			tok, err := FromJSON(applyPatch(t, base.JSON(), v.Patch), nil)
			if err != nil {
				t.Fatal(err)
			}
			fails, n := checkExtra(t, tok, v.Encode, v.Decode)
			t.Logf("%s: %d/%d checks match HF %s", v.Name, n-fails, n, vf.Version)
		})
	}
}
