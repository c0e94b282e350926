package tokenizer

import (
	"encoding/json"
	"strings"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// pattern is HF's Pattern for Split / Replace: either a literal string or a
// regex. HF compiles regexes with Oniguruma; regexp2 (a .NET-style
// backtracking engine) supports the same look-around syntax, which Go's RE2
// regexp cannot.
type pattern struct {
	literal string
	re      *regexp2.Regexp
	fastAt  func(s string, i int) int // hand-written equivalent of re, if any
}

func parsePattern(raw json.RawMessage, field string) (*pattern, error) {
	var v struct {
		String *string `json:"String"`
		Regex  *string `json:"Regex"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, malformed(field, "%v", err)
	}
	switch {
	case v.String != nil:
		return &pattern{literal: *v.String}, nil
	case v.Regex != nil:
		re, err := regexp2.Compile(*v.Regex, regexp2.None)
		if err != nil {
			return nil, malformed(field, "regex %q: %v", *v.Regex, err)
		}
		return &pattern{re: re, fastAt: fastMatcher(*v.Regex)}, nil
	}
	return nil, malformed(field, "want {\"String\":...} or {\"Regex\":...}")
}

// span is a byte range [start, end) of a string.
type span struct{ start, end int }

// matches returns the non-empty, non-overlapping matches of p in s, leftmost
// first, as byte offsets.
func (p *pattern) matches(s string) []span {
	if s == "" {
		return nil
	}
	if p.fastAt != nil {
		out := make([]span, 0, len(s)/4+1)
		for i := 0; i < len(s); {
			end := p.fastAt(s, i)
			out = append(out, span{i, end})
			i = end
		}
		return out
	}
	if p.re == nil {
		if p.literal == "" {
			return nil
		}
		var out []span
		for off := 0; ; {
			i := strings.Index(s[off:], p.literal)
			if i < 0 {
				return out
			}
			out = append(out, span{off + i, off + i + len(p.literal)})
			off += i + len(p.literal)
		}
	}
	return p.regexMatches(s)
}

// regexMatches runs the regex engine itself.
func (p *pattern) regexMatches(s string) []span {
	// regexp2 reports rune indices (it matches over []rune); convert them to
	// byte offsets through a prefix table so astral characters (emoji), which
	// are one rune but four bytes, map back correctly.
	runes := []rune(s)
	byteAt := make([]int, len(runes)+1)
	off := 0
	for i, r := range runes {
		byteAt[i] = off
		off += utf8.RuneLen(r)
	}
	byteAt[len(runes)] = off
	var out []span
	m, err := p.re.FindRunesMatch(runes)
	for err == nil && m != nil {
		if m.Length > 0 {
			out = append(out, span{byteAt[m.Index], byteAt[m.Index+m.Length]})
		}
		m, err = p.re.FindNextMatch(m)
	}
	return out
}

// replaceAll replaces every match with content.
func (p *pattern) replaceAll(s, content string) string {
	if p.re == nil {
		if p.literal == "" {
			return s
		}
		return strings.ReplaceAll(s, p.literal, content)
	}
	ms := p.matches(s)
	if len(ms) == 0 {
		return s
	}
	var b strings.Builder
	prev := 0
	for _, m := range ms {
		b.WriteString(s[prev:m.start])
		b.WriteString(content)
		prev = m.end
	}
	b.WriteString(s[prev:])
	return b.String()
}
