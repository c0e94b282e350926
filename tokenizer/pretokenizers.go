package tokenizer

import (
	"encoding/json"
	"strings"
	"sync"

	"github.com/dlclark/regexp2"
)

// preTokenizer splits each piece of normalized text further; the BPE model
// then runs on every resulting piece independently.
type preTokenizer interface {
	// preTokenize appends the pieces of s to dst. Empty pieces are never
	// produced (HF drops them in PreTokenizedString::split).
	preTokenize(dst []string, s string) []string
}

type preSequence []preTokenizer

func (q preSequence) preTokenize(dst []string, s string) []string {
	cur := []string{s}
	var next []string
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

func (p *preSplit) preTokenize(dst []string, s string) []string {
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
			dst = append(dst, s[f.start:f.end])
		}
	}
	return dst
}

// gpt2Pattern is the regex ByteLevel uses when use_regex is true.
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

var gpt2Split = sync.OnceValue(func() *preSplit {
	return &preSplit{pat: &pattern{re: regexp2.MustCompile(gpt2Pattern, regexp2.None)}, behavior: splitIsolated}
})

// preByteLevel maps bytes to GPT-2 characters, optionally after a prefix
// space and the GPT-2 split regex.
type preByteLevel struct {
	addPrefixSpace bool
	useRegex       bool
}

func (p preByteLevel) preTokenize(dst []string, s string) []string {
	if p.addPrefixSpace && !strings.HasPrefix(s, " ") {
		s = " " + s
	}
	start := len(dst)
	if p.useRegex {
		dst = gpt2Split().preTokenize(dst, s)
	} else if s != "" {
		dst = append(dst, s)
	}
	for i := start; i < len(dst); i++ {
		dst[i] = byteLevelEncode(dst[i])
	}
	return dst
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
	}
	return nil, unsupported("pre_tokenizer", head.Type)
}
