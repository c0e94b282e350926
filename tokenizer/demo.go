package tokenizer

import (
	"encoding/json"
	"fmt"
)

// NewByteLevelDemo builds a self-contained byte-level tokenizer for the
// built-in demo model: 256 byte tokens with no merges, ids 0..255 in GPT-2's
// bytes_to_unicode order (id 0 is "!", as in GPT-2's vocab; bytes that GPT-2
// remaps, like space = "Ġ", come after the printable ones), followed by
// extraSpecial as special added tokens (ids 256, 257, ...; empty and
// duplicate names are skipped).
//
// Its tokenizer_config is synthesized from well-known names: a begin token
// ("<|begin_of_text|>", "<s>", "<bos>") becomes bos_token and end tokens
// ("<|end_of_text|>", "<|eot_id|>", "<|endoftext|>", "<|im_end|>", "</s>",
// "<eos>") the eos_token list, so BOS/EOS work for the demo too.
// JSON() returns a tokenizer.json that Load/FromJSON (and HF) can read.
func NewByteLevelDemo(extraSpecial []string) *Tokenizer {
	vocab := make(map[string]int, 256)
	for id, b := range gpt2ByteOrder {
		vocab[string(byteToRune[b])] = id
	}
	type added struct {
		ID         int    `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		LStrip     bool   `json:"lstrip"`
		RStrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
		Special    bool   `json:"special"`
	}
	adds := []added{}
	seen := map[string]bool{}
	cfg := map[string]any{}
	var eos []any
	for _, s := range extraSpecial {
		if s == "" || seen[s] {
			continue
		}
		seen[s] = true
		adds = append(adds, added{ID: 256 + len(adds), Content: s, Special: true})
		switch s {
		case "<|begin_of_text|>", "<s>", "<bos>":
			if _, ok := cfg["bos_token"]; !ok {
				cfg["bos_token"] = s
			}
		case "<|end_of_text|>", "<|eot_id|>", "<|endoftext|>", "<|im_end|>", "</s>", "<eos>":
			eos = append(eos, s)
		}
	}
	if len(eos) == 1 {
		cfg["eos_token"] = eos[0]
	} else if len(eos) > 1 {
		cfg["eos_token"] = eos
	}
	byteLevel := map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
	doc := map[string]any{
		"version":        "1.0",
		"truncation":     nil,
		"padding":        nil,
		"added_tokens":   adds,
		"normalizer":     nil,
		"pre_tokenizer":  byteLevel,
		"post_processor": byteLevel,
		"decoder":        byteLevel,
		"model": map[string]any{
			"type": "BPE", "dropout": nil, "unk_token": nil,
			"continuing_subword_prefix": nil, "end_of_word_suffix": nil,
			"fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
			"vocab": vocab, "merges": []string{},
		},
	}
	js, err := json.Marshal(doc)
	if err != nil {
		panic(fmt.Sprintf("tokenizer: demo tokenizer.json: %v", err))
	}
	cj, _ := json.Marshal(cfg)
	t, err := FromJSON(js, cj)
	if err != nil {
		// The document is built right above; failing to read it back is a bug here.
		panic(fmt.Sprintf("tokenizer: demo tokenizer does not load: %v", err))
	}
	return t
}
