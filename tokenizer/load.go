package tokenizer

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Load reads dir/tokenizer.json (or tokenizer.json.gz) and, if present,
// dir/tokenizer_config.json.
func Load(dir string) (*Tokenizer, error) {
	tj, err := os.ReadFile(filepath.Join(dir, "tokenizer.json"))
	if errors.Is(err, fs.ErrNotExist) {
		tj, err = readGzip(filepath.Join(dir, "tokenizer.json.gz"))
		if errors.Is(err, fs.ErrNotExist) {
			err = fmt.Errorf("no tokenizer.json or tokenizer.json.gz: %w", fs.ErrNotExist)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("tokenizer: load %s: %w", dir, err)
	}
	cfg, err := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: load %s: %w", dir, err)
	}
	t, err := FromJSON(tj, cfg)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: load %s: %w", dir, err)
	}
	return t, nil
}

func readGzip(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	defer zr.Close()
	return io.ReadAll(zr)
}

type rawTokenizer struct {
	AddedTokens   []addedToken    `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         json.RawMessage `json:"model"`
}

type rawBPE struct {
	Type                    string          `json:"type"`
	Dropout                 *float64        `json:"dropout"`
	UnkToken                *string         `json:"unk_token"`
	ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
	FuseUnk                 bool            `json:"fuse_unk"`
	ByteFallback            bool            `json:"byte_fallback"`
	IgnoreMerges            bool            `json:"ignore_merges"`
	Vocab                   map[string]int  `json:"vocab"`
	Merges                  json.RawMessage `json:"merges"`
}

// FromJSON builds a tokenizer from the contents of tokenizer.json and
// (optionally, may be nil) tokenizer_config.json.
func FromJSON(tokenizerJSON, configJSON []byte) (*Tokenizer, error) {
	var raw rawTokenizer
	if err := json.Unmarshal(tokenizerJSON, &raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if isNull(raw.Model) {
		return nil, malformed("model", "missing")
	}
	t := &Tokenizer{raw: tokenizerJSON}
	var err error
	if t.model, err = parseModel(raw.Model); err != nil {
		return nil, err
	}
	if t.normalizer, err = parseNormalizer(raw.Normalizer); err != nil {
		return nil, err
	}
	if t.pre, err = parsePreTokenizer(raw.PreTokenizer); err != nil {
		return nil, err
	}
	if t.post, err = parsePostProcessor(raw.PostProcessor); err != nil {
		return nil, err
	}
	if t.decoder, err = parseDecoder(raw.Decoder); err != nil {
		return nil, err
	}
	if err := t.initAdded(raw.AddedTokens); err != nil {
		return nil, err
	}
	if len(configJSON) > 0 {
		if err := json.Unmarshal(configJSON, &t.config); err != nil {
			return nil, fmt.Errorf("tokenizer: tokenizer_config.json: %w", err)
		}
	}
	if t.config == nil {
		t.config = map[string]any{}
	}
	t.initBOSEOS()
	t.initFastPath()
	t.initMaxBytesPerToken()
	return t, nil
}

func parseModel(raw json.RawMessage) (*bpeModel, error) {
	var head rawComponent
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, malformed("model", "%v", err)
	}
	if head.Type != "" && head.Type != "BPE" {
		return nil, unsupported("model", head.Type)
	}
	var v rawBPE
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, malformed("model", "%v", err)
	}
	// HF infers the model from its fields when "type" is absent; a BPE is
	// recognisable by its merges.
	if head.Type != "BPE" && !(head.Type == "" && v.Merges != nil) {
		typ := head.Type
		if typ == "" {
			typ = "(untyped)"
		}
		return nil, unsupported("model", typ)
	}
	if v.Dropout != nil && *v.Dropout != 0 {
		return nil, &ComponentError{Component: "model", Type: "BPE", Err: fmt.Errorf("%w: dropout %v (non-deterministic)", ErrUnsupported, *v.Dropout)}
	}
	if v.Vocab == nil {
		return nil, malformed("model.vocab", "missing")
	}
	m := &bpeModel{vocab: v.Vocab, unkID: -1, fuseUnk: v.FuseUnk, byteFallback: v.ByteFallback, ignoreMerges: v.IgnoreMerges}
	maxID := -1
	for tok, id := range v.Vocab {
		if id < 0 || id >= maxVocabID {
			return nil, malformed("model.vocab", "token %q has id %d out of range", tok, id)
		}
		maxID = max(maxID, id)
	}
	m.vocabR = make([]string, maxID+1)
	for tok, id := range v.Vocab {
		m.vocabR[id] = tok
	}
	if v.ContinuingSubwordPrefix != nil {
		m.continuingPrefix = *v.ContinuingSubwordPrefix
	}
	if v.EndOfWordSuffix != nil {
		m.endOfWordSuffix = *v.EndOfWordSuffix
	}
	if v.UnkToken != nil {
		id, ok := v.Vocab[*v.UnkToken]
		if !ok {
			return nil, malformed("model.unk_token", "%q not in vocab", *v.UnkToken)
		}
		m.unkID, m.unkToken = id, *v.UnkToken
	}
	merges, err := parseMerges(v.Merges)
	if err != nil {
		return nil, err
	}
	if err := m.buildMerges(merges); err != nil {
		return nil, err
	}
	m.initByteFallback()
	return m, nil
}

// parseMerges accepts both serialisations: ["a b", ...] (older files, e.g.
// Llama 3) and [["a","b"], ...] (newer, e.g. Qwen 3).
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	var strs []string
	if err := json.Unmarshal(raw, &strs); err == nil {
		out := make([][2]string, len(strs))
		for i, s := range strs {
			a, b, ok := strings.Cut(s, " ")
			if !ok || strings.Contains(b, " ") {
				return nil, malformed("model.merges", "merge %d %q is not two space-separated tokens", i, s)
			}
			out[i] = [2]string{a, b}
		}
		return out, nil
	}
	var pairs [][]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, malformed("model.merges", "want a list of \"a b\" strings or [\"a\",\"b\"] pairs: %v", err)
	}
	out := make([][2]string, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 {
			return nil, malformed("model.merges", "merge %d has %d elements, want 2", i, len(p))
		}
		out[i] = [2]string{p[0], p[1]}
	}
	return out, nil
}

func (t *Tokenizer) initAdded(added []addedToken) error {
	t.added = added
	t.addedByID = make(map[int]int, len(added))
	t.addedByContent = make(map[string]int, len(added))
	t.special = map[string]bool{}
	t.vocabSize = len(t.model.vocabR)
	for i, a := range added {
		if a.ID < 0 || a.ID >= maxVocabID {
			return malformed("added_tokens", "token %q has id %d out of range", a.Content, a.ID)
		}
		if a.Content == "" {
			return malformed("added_tokens", "token %d has empty content", a.ID)
		}
		t.addedByID[a.ID] = i
		t.addedByContent[a.Content] = i
		if a.Special {
			t.special[a.Content] = true
		}
		t.vocabSize = max(t.vocabSize, a.ID+1)
	}
	for i, a := range added {
		if !a.Normalized {
			if t.rawTrie == nil {
				t.rawTrie = newTrie()
			}
			t.rawTrie.insert(a.Content, i)
			continue
		}
		// Normalized tokens are searched for in normalized text, so the
		// pattern is the normalized content (HF's normalized_cache).
		pat := a.Content
		if t.normalizer != nil {
			pat = t.normalizer.normalize(pat)
		}
		if t.normTrie == nil {
			t.normTrie = newTrie()
		}
		t.normTrie.insert(pat, i)
	}
	return nil
}

// specialTokenID reads a tokenizer_config.json token entry: a string or an
// AddedToken-like object {"content": ...}.
func (t *Tokenizer) specialTokenID(v any) (int, bool) {
	switch x := v.(type) {
	case string:
		return t.TokenID(x)
	case map[string]any:
		if c, ok := x["content"].(string); ok {
			return t.TokenID(c)
		}
	}
	return 0, false
}

func (t *Tokenizer) initBOSEOS() {
	t.bos, t.hasBOS = t.specialTokenID(t.config["bos_token"])
	switch x := t.config["eos_token"].(type) {
	case []any:
		for _, e := range x {
			if id, ok := t.specialTokenID(e); ok {
				t.eos = append(t.eos, id)
			}
		}
	default:
		if id, ok := t.specialTokenID(x); ok {
			t.eos = append(t.eos, id)
		}
	}
}

// JSON returns a tokenizer.json that Load/FromJSON can read back: the
// original bytes for loaded tokenizers, a generated file for the demo one.
func (t *Tokenizer) JSON() []byte { return bytes.Clone(t.raw) }

// MarshalJSON makes *Tokenizer marshal as its tokenizer.json.
func (t *Tokenizer) MarshalJSON() ([]byte, error) {
	if !json.Valid(t.raw) {
		return nil, fmt.Errorf("tokenizer: no valid tokenizer.json representation")
	}
	return t.JSON(), nil
}

// maxVocabID bounds ids so a corrupt file cannot make us allocate an
// enormous id table (real vocabularies are well under a million).
const maxVocabID = 1 << 22
