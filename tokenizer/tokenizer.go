package tokenizer

import (
	"fmt"
	"maps"
	"strings"
	"unicode/utf8"
)

// Tokenizer encodes text to ids and back exactly like HF tokenizers does for
// the same tokenizer.json. It is safe for concurrent use.
type Tokenizer struct {
	model      *bpeModel
	normalizer normalizer   // nil: none
	pre        preTokenizer // nil: the whole segment is one word
	post       postProcessor
	decoder    decoderChain

	added          []addedToken
	addedByID      map[int]int    // id -> index in added
	addedByContent map[string]int // content -> index in added
	special        map[string]bool
	rawTrie        *trie // tokens with normalized=false, matched in raw text
	normTrie       *trie // tokens with normalized=true, matched after normalization
	vocabSize      int

	config map[string]any
	bos    int
	hasBOS bool
	eos    []int

	raw []byte // tokenizer.json

	// byteSplit is set when the pre-tokenizer is exactly Split(known regex,
	// Isolated) + ByteLevel without prefix space or regex (Llama 3, Qwen), or
	// ByteLevel alone with its GPT-2 regex and no prefix space (the demo):
	// Encode then scans pre-tokens in place and caches ids by raw pre-token,
	// skipping the intermediate strings.
	byteSplit func(s string, i int) int
	rawCache  wordCache

	maxBytesPerToken int // see MaxBytesPerToken
}

// normalizerShrink bounds how much a normalizer can shrink text it keeps:
// Unicode normalization and case mapping turn a character of at most 4 bytes
// into at least one of at least 1 byte.
const normalizerShrink = 4

// MaxBytesPerToken bounds the input text one token can stand for, in bytes:
// the longest vocabulary entry or added token (vocabulary entries of a
// byte-level vocab counted in characters, one per input byte; others in
// their own bytes, which a SentencePiece "▁" for a 1-byte space only
// overstates), times normalizerShrink when there is a normalizer. A text of
// more than MaxBytesPerToken() * n bytes therefore encodes to more than n
// tokens, so a server can refuse it before tokenizing. The only exception
// is text the tokenizer discards or fuses (characters a normalizer deletes,
// whitespace an lstrip/rstrip added token swallows, runs of unknown
// characters under fuse_unk), which no ordinary prompt is made of.
func (t *Tokenizer) MaxBytesPerToken() int { return t.maxBytesPerToken }

func (t *Tokenizer) initMaxBytesPerToken() {
	byteLevel := t.byteSplit != nil || hasByteLevel(t.pre)
	longest := 1
	for tok := range t.model.vocab {
		n := len(tok)
		if byteLevel {
			n = utf8.RuneCountInString(tok)
		}
		longest = max(longest, n)
	}
	for _, a := range t.added {
		longest = max(longest, len(a.Content))
	}
	if t.normalizer != nil {
		longest *= normalizerShrink
	}
	t.maxBytesPerToken = longest
}

// hasByteLevel reports whether p maps bytes to GPT-2 characters.
func hasByteLevel(p preTokenizer) bool {
	switch p := p.(type) {
	case preByteLevel:
		return true
	case preSequence:
		for _, q := range p {
			if hasByteLevel(q) {
				return true
			}
		}
	}
	return false
}

// initFastPath recognises the byte-level layout that encodeByteLevel handles.
func (t *Tokenizer) initFastPath() {
	// ByteLevel alone with use_regex (GPT-2, the demo) is the same layout
	// with GPT-2's split regex.
	if bl, ok := t.pre.(preByteLevel); ok && bl.useRegex && !bl.addPrefixSpace {
		t.byteSplit = gpt2Split().pat.fastAt
		return
	}
	seq, ok := t.pre.(preSequence)
	if !ok || len(seq) != 2 {
		return
	}
	sp, ok1 := seq[0].(*preSplit)
	bl, ok2 := seq[1].(preByteLevel)
	if ok1 && ok2 && sp.pat.fastAt != nil && sp.behavior == splitIsolated && !sp.invert && !bl.addPrefixSpace && !bl.useRegex {
		t.byteSplit = sp.pat.fastAt
	}
}

// encodeByteLevel is the fast path of Encode for one normalized segment; it
// gives the same ids as pre-tokenizing and running the model word by word.
func (t *Tokenizer) encodeByteLevel(ids []int, s string) []int {
	for i := 0; i < len(s); {
		end := t.byteSplit(s, i)
		raw := s[i:end]
		i = end
		if cached, ok := t.rawCache.get(raw); ok {
			ids = append(ids, cached...)
			continue
		}
		start := len(ids)
		ids = t.model.tokenizeUncached(ids, byteLevelEncode(raw))
		if len(raw) < maxCachedWordLen {
			// Clone: raw points into the caller's text.
			t.rawCache.put(strings.Clone(raw), ids[start:])
		}
	}
	return ids
}

// Encode tokenizes text. With addSpecialTokens the post-processor runs (e.g.
// Llama 2's TemplateProcessing adds <s>); added tokens written in the text
// are always recognised.
func (t *Tokenizer) Encode(text string, addSpecialTokens bool) ([]int, error) {
	if !utf8.ValidString(text) {
		return nil, ErrInvalidUTF8
	}
	ids := make([]int, 0, len(text)/3+2)
	var words []word
	for _, seg := range t.splitAdded(nil, text, t.rawTrie) {
		if seg.tok >= 0 {
			ids = append(ids, t.added[seg.tok].ID)
			continue
		}
		// Each stretch between added tokens is normalized on its own; this
		// is why Prepend("▁") applies after every added token.
		s := seg.text
		if t.normalizer != nil {
			s = t.normalizer.normalize(s)
		}
		for _, sub := range t.splitAdded(nil, s, t.normTrie) {
			if sub.tok >= 0 {
				ids = append(ids, t.added[sub.tok].ID)
				continue
			}
			if t.byteSplit != nil {
				ids = t.encodeByteLevel(ids, sub.text)
				continue
			}
			// Only text at offset 0 of the input counts as "first" (for
			// Metaspace's prepend_scheme "first").
			w := word{sub.text, seg.off == 0 && sub.off == 0}
			words = words[:0]
			if t.pre != nil {
				words = t.pre.preTokenize(words, w)
			} else {
				words = append(words, w)
			}
			for _, w := range words {
				ids = t.model.tokenize(ids, w.s)
			}
		}
	}
	if addSpecialTokens && t.post != nil {
		ids = t.post.process(ids)
	}
	return ids, nil
}

// tokenFor returns the string HF decodes for id: added tokens first, then the model vocab.
func (t *Tokenizer) tokenFor(id int) (string, bool) {
	if i, ok := t.addedByID[id]; ok {
		return t.added[i].Content, true
	}
	if id >= 0 && id < len(t.model.vocabR) {
		if s := t.model.vocabR[id]; s != "" {
			return s, true
		}
		// An id hole in the vocab: only valid if some token really is "".
		if tid, ok := t.model.vocab[""]; ok && tid == id {
			return "", true
		}
	}
	return "", false
}

// Decode turns ids back into text. Unlike HF, which silently drops unknown
// ids, an id outside the vocabulary is an error.
func (t *Tokenizer) Decode(ids []int, skipSpecialTokens bool) (string, error) {
	st := t.decoder.newState()
	st.out.Grow(len(ids) * 4)
	for _, id := range ids {
		tok, ok := t.tokenFor(id)
		if !ok {
			return "", fmt.Errorf("%w: %d (vocab size %d)", ErrUnknownID, id, t.vocabSize)
		}
		if skipSpecialTokens && t.special[tok] {
			continue
		}
		st.pushInto(tok)
	}
	st.flushInto()
	return st.out.String(), nil
}

// VocabSize is the number of ids: model vocab plus added tokens (max id + 1).
func (t *Tokenizer) VocabSize() int { return t.vocabSize }

// TokenID looks up a token string, added tokens first.
func (t *Tokenizer) TokenID(token string) (int, bool) {
	if i, ok := t.addedByContent[token]; ok {
		return t.added[i].ID, true
	}
	id, ok := t.model.vocab[token]
	return id, ok
}

// TokenString returns the raw vocabulary string of id (byte-level tokens in
// their GPT-2 character form, e.g. "Ġhello").
func (t *Tokenizer) TokenString(id int) (string, bool) { return t.tokenFor(id) }

// IsSpecial reports whether id is a special added token (skipped by Decode
// with skipSpecialTokens).
func (t *Tokenizer) IsSpecial(id int) bool {
	tok, ok := t.tokenFor(id)
	return ok && t.special[tok]
}

// BOS is tokenizer_config.json's bos_token, if set and known.
func (t *Tokenizer) BOS() (int, bool) { return t.bos, t.hasBOS }

// EOS lists tokenizer_config.json's eos_token id(s); empty if absent.
func (t *Tokenizer) EOS() []int { return append([]int(nil), t.eos...) }

// Config returns a copy of the parsed tokenizer_config.json (empty if none).
// The copy is shallow: nested values are shared and must not be modified.
func (t *Tokenizer) Config() map[string]any { return maps.Clone(t.config) }
