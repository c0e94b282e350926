package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// preTokenizer splits each piece of normalized text further; the BPE model
// then runs on every resulting piece independently.
type preTokenizer interface {
	// preTokenize appends the pieces of w to dst. Empty pieces are never
	// produced (HF drops them in PreTokenizedString::split).
	preTokenize(dst []word, w word) []word
}

// word is a piece of text being pre-tokenized. first records whether it
// starts at offset 0 of the original input, which Metaspace's "first"
// prepend scheme depends on.
type word struct {
	s     string
	first bool
}

type preSequence []preTokenizer

func (q preSequence) preTokenize(dst []word, w word) []word {
	cur := []word{w}
	var next []word
	for _, p := range q {
		next = next[:0]
		for _, piece := range cur {
			next = p.preTokenize(next, piece)
		}
		cur, next = next, cur
	}
	return append(dst, cur...)
}

type splitBehavior int

const (
	splitRemoved splitBehavior = iota
	splitIsolated
	splitMergedWithPrevious
	splitMergedWithNext
	splitContiguous
)

var splitBehaviors = map[string]splitBehavior{
	"Removed":            splitRemoved,
	"Isolated":           splitIsolated,
	"MergedWithPrevious": splitMergedWithPrevious,
	"MergedWithNext":     splitMergedWithNext,
	"Contiguous":         splitContiguous,
}

// preSplit is HF's Split pre-tokenizer (NormalizedString::split semantics).
type preSplit struct {
	pat      *pattern
	behavior splitBehavior
	invert   bool
}

type flagged struct {
	span
	match bool
}

func (p *preSplit) preTokenize(dst []word, w word) []word {
	s := w.s
	if s == "" {
		return dst
	}
	// Matches and the gaps between them, in order, flagged.
	var parts []flagged
	prev := 0
	for _, m := range p.pat.matches(s) {
		if m.start > prev {
			parts = append(parts, flagged{span{prev, m.start}, p.invert})
		}
		parts = append(parts, flagged{m, !p.invert})
		prev = m.end
	}
	if prev < len(s) {
		parts = append(parts, flagged{span{prev, len(s)}, p.invert})
	}
	var out []flagged
	switch p.behavior {
	case splitIsolated:
		out = parts
	case splitRemoved:
		for _, f := range parts {
			if !f.match {
				out = append(out, f)
			}
		}
	case splitContiguous:
		prevMatch := false
		for _, f := range parts {
			if f.match == prevMatch && len(out) > 0 {
				out[len(out)-1].end = f.end
			} else {
				out = append(out, f)
			}
			prevMatch = f.match
		}
	case splitMergedWithPrevious:
		prevMatch := false
		for _, f := range parts {
			if f.match && !prevMatch && len(out) > 0 {
				out[len(out)-1].end = f.end
			} else {
				out = append(out, f)
			}
			prevMatch = f.match
		}
	case splitMergedWithNext:
		prevMatch := false
		for i := len(parts) - 1; i >= 0; i-- {
			f := parts[i]
			if f.match && !prevMatch && len(out) > 0 {
				out[len(out)-1].start = f.start
			} else {
				out = append(out, f)
			}
			prevMatch = f.match
		}
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	for _, f := range out {
		if f.end > f.start {
			dst = append(dst, word{s[f.start:f.end], w.first && f.start == 0})
		}
	}
	return dst
}

// gpt2Pattern is the regex ByteLevel uses when use_regex is true.
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

var gpt2Split = sync.OnceValue(func() *preSplit {
	re := regexp2.MustCompile(gpt2Pattern, regexp2.None)
	return &preSplit{pat: &pattern{re: re, fastAt: fastMatcher(gpt2Pattern)}, behavior: splitIsolated}
})

// preByteLevel maps bytes to GPT-2 characters, optionally after a prefix
// space and the GPT-2 split regex.
type preByteLevel struct {
	addPrefixSpace bool
	useRegex       bool
}

func (p preByteLevel) preTokenize(dst []word, w word) []word {
	if p.addPrefixSpace && !strings.HasPrefix(w.s, " ") {
		w.s = " " + w.s
	}
	start := len(dst)
	if p.useRegex {
		dst = gpt2Split().preTokenize(dst, w)
	} else if w.s != "" {
		dst = append(dst, w)
	}
	for i := start; i < len(dst); i++ {
		dst[i].s = byteLevelEncode(dst[i].s)
	}
	return dst
}

type prependScheme int

const (
	prependAlways prependScheme = iota
	prependFirst
	prependNever
)

// preMetaspace replaces spaces with the replacement char (usually "▁"),
// prepends one per the prepend scheme and optionally splits before each.
type preMetaspace struct {
	replacement rune
	scheme      prependScheme
	split       bool
}

func (p preMetaspace) preTokenize(dst []word, w word) []word {
	rep := string(p.replacement)
	s := strings.ReplaceAll(w.s, " ", rep)
	if !strings.HasPrefix(s, rep) && (p.scheme == prependAlways || p.scheme == prependFirst && w.first) {
		s = rep + s
	}
	if s == "" {
		return dst
	}
	if !p.split {
		return append(dst, word{s, w.first})
	}
	// Split before every replacement char (MergedWithNext).
	start := 0
	for i, r := range s {
		if r == p.replacement && i > start {
			dst = append(dst, word{s[start:i], w.first && start == 0})
			start = i
		}
	}
	return append(dst, word{s[start:], w.first && start == 0})
}

func parsePrependScheme(raw json.RawMessage) (prependScheme, bool, error) {
	var v struct {
		Replacement    string  `json:"replacement"`
		AddPrefixSpace *bool   `json:"add_prefix_space"`
		PrependScheme  *string `json:"prepend_scheme"`
		Split          *bool   `json:"split"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, false, err
	}
	scheme := prependAlways // HF's default
	if v.PrependScheme != nil {
		switch *v.PrependScheme {
		case "always":
			scheme = prependAlways
		case "first":
			scheme = prependFirst
		case "never":
			scheme = prependNever
		default:
			return 0, false, fmt.Errorf("unknown prepend_scheme %q", *v.PrependScheme)
		}
	}
	if v.AddPrefixSpace != nil && !*v.AddPrefixSpace {
		if v.PrependScheme != nil && scheme != prependNever {
			return 0, false, fmt.Errorf("add_prefix_space does not match declared prepend_scheme")
		}
		scheme = prependNever
	}
	return scheme, v.Split == nil || *v.Split, nil
}

// parseReplacement reads Metaspace's one-character "replacement".
func parseReplacement(raw json.RawMessage) (rune, error) {
	var v struct {
		Replacement *string `json:"replacement"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, err
	}
	if v.Replacement == nil || utf8.RuneCountInString(*v.Replacement) != 1 {
		return 0, fmt.Errorf("replacement must be one character")
	}
	r, _ := utf8.DecodeRuneInString(*v.Replacement)
	return r, nil
}

func parsePreTokenizer(raw json.RawMessage) (preTokenizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	var head rawComponent
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, malformed("pre_tokenizer", "%v", err)
	}
	switch head.Type {
	case "Sequence":
		var v struct {
			Pretokenizers []json.RawMessage `json:"pretokenizers"`
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, malformed("pre_tokenizer.pretokenizers", "%v", err)
		}
		var seq preSequence
		for _, r := range v.Pretokenizers {
			p, err := parsePreTokenizer(r)
			if err != nil {
				return nil, err
			}
			if p != nil {
				seq = append(seq, p)
			}
		}
		return seq, nil
	case "Split":
		var v struct {
			Pattern  json.RawMessage `json:"pattern"`
			Behavior string          `json:"behavior"`
			Invert   bool            `json:"invert"`
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, malformed("pre_tokenizer.behavior", "%v", err)
		}
		b, ok := splitBehaviors[v.Behavior]
		if !ok {
			return nil, malformed("pre_tokenizer.behavior", "unknown split behavior %q", v.Behavior)
		}
		pat, err := parsePattern(v.Pattern, "pre_tokenizer.pattern")
		if err != nil {
			return nil, err
		}
		return &preSplit{pat: pat, behavior: b, invert: v.Invert}, nil
	case "ByteLevel":
		v := struct {
			AddPrefixSpace bool `json:"add_prefix_space"`
			UseRegex       bool `json:"use_regex"`
		}{AddPrefixSpace: true, UseRegex: true} // HF defaults
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, malformed("pre_tokenizer.add_prefix_space", "%v", err)
		}
		return preByteLevel{v.AddPrefixSpace, v.UseRegex}, nil
	case "Metaspace":
		r, err := parseReplacement(raw)
		if err != nil {
			return nil, malformed("pre_tokenizer.replacement", "%v", err)
		}
		scheme, split, err := parsePrependScheme(raw)
		if err != nil {
			return nil, malformed("pre_tokenizer.prepend_scheme", "%v", err)
		}
		return preMetaspace{replacement: r, scheme: scheme, split: split}, nil
	}
	return nil, unsupported("pre_tokenizer", head.Type)
}
