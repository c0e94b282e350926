package tokenizer

import (
	"encoding/json"
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// normalizer transforms one segment of text (between added tokens). Offsets
// are not tracked: only ids matter for this package.
type normalizer interface {
	normalize(s string) string
}

type normSequence []normalizer

func (q normSequence) normalize(s string) string {
	for _, n := range q {
		s = n.normalize(s)
	}
	return s
}

type normUnicode struct{ form norm.Form }

func (n normUnicode) normalize(s string) string { return n.form.String(s) }

// normPrepend prepends only to non-empty segments (HF normalizers/prepend.rs),
// which is why "<s>hi" encodes as "<s>", "▁hi" and a lone "<s>" gets no "▁".
type normPrepend struct{ prefix string }

func (n normPrepend) normalize(s string) string {
	if s == "" {
		return s
	}
	return n.prefix + s
}

// normReplace replaces every non-overlapping, leftmost match of a literal
// string or a regex.
type normReplace struct {
	pat     *pattern
	content string
}

func (n normReplace) normalize(s string) string { return n.pat.replaceAll(s, n.content) }

type normLowercase struct{}

// Rust's str::to_lowercase is full Unicode lowercasing, which strings.ToLower
// approximates except for final sigma; acceptable for the lowercase normalizer.
func (normLowercase) normalize(s string) string { return strings.ToLower(s) }

type normStrip struct{ left, right bool }

func (n normStrip) normalize(s string) string {
	if n.left {
		s = strings.TrimLeftFunc(s, unicode.IsSpace)
	}
	if n.right {
		s = strings.TrimRightFunc(s, unicode.IsSpace)
	}
	return s
}

type rawComponent struct {
	Type string `json:"type"`
}

func parseNormalizer(raw json.RawMessage) (normalizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	var head rawComponent
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, malformed("normalizer", "%v", err)
	}
	switch head.Type {
	case "Sequence":
		var v struct {
			Normalizers []json.RawMessage `json:"normalizers"`
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, malformed("normalizer.normalizers", "%v", err)
		}
		var seq normSequence
		for _, r := range v.Normalizers {
			n, err := parseNormalizer(r)
			if err != nil {
				return nil, err
			}
			if n != nil {
				seq = append(seq, n)
			}
		}
		return seq, nil
	case "NFC":
		return normUnicode{norm.NFC}, nil
	case "NFD":
		return normUnicode{norm.NFD}, nil
	case "NFKC":
		return normUnicode{norm.NFKC}, nil
	case "NFKD":
		return normUnicode{norm.NFKD}, nil
	case "Lowercase":
		return normLowercase{}, nil
	case "Strip":
		var v struct {
			Left  bool `json:"strip_left"`
			Right bool `json:"strip_right"`
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, malformed("normalizer.strip_left", "%v", err)
		}
		return normStrip{v.Left, v.Right}, nil
	case "Prepend":
		var v struct {
			Prepend *string `json:"prepend"`
		}
		if err := json.Unmarshal(raw, &v); err != nil || v.Prepend == nil {
			return nil, malformed("normalizer.prepend", "missing or not a string")
		}
		return normPrepend{*v.Prepend}, nil
	case "Replace":
		var v struct {
			Pattern json.RawMessage `json:"pattern"`
			Content *string         `json:"content"`
		}
		if err := json.Unmarshal(raw, &v); err != nil || v.Content == nil {
			return nil, malformed("normalizer.content", "missing or not a string")
		}
		p, err := parsePattern(v.Pattern, "normalizer.pattern")
		if err != nil {
			return nil, err
		}
		return normReplace{p, *v.Content}, nil
	}
	return nil, unsupported("normalizer", head.Type)
}

func isNull(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s == "" || s == "null"
}
