// Package jsonscan reads the few JSON shapes that the loaders' hot paths decode themselves
// (objects of known keys, plain strings, numbers, arrays of numbers) out of a document already
// known to be valid JSON. Each reader says no (ok false) to anything it does not read, and the
// caller then asks encoding/json, so these never decide what a document means: they only
// spare encoding/json's reflection where the document is written the way its writer writes it.
// Every caller's fast path is fuzzed against encoding/json. Valid (valid.go) is the one reader
// that does decide: whether a document is JSON at all, with encoding/json.Valid's answer for
// every input (FuzzValid), for the loaders that check a whole header before reading it.
package jsonscan

import (
	"bytes"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// Space is the index of the first byte at or after i that is not JSON whitespace.
func Space(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// PlainString is the contents of the string starting at b[i], and the index past it, when it
// has no escapes.
func PlainString(b []byte, i int) (s []byte, end int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	n := bytes.IndexByte(b[i+1:], '"')
	if n < 0 {
		return nil, i, false
	}
	s = b[i+1 : i+1+n]
	return s, i + n + 2, bytes.IndexByte(s, '\\') < 0
}

// Digits is the run of decimal digits starting at b[i] (an unsigned integer as JSON writes it,
// when the next byte ends the number), and the index past it.
func Digits(b []byte, i int) ([]byte, int) {
	start := i
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return b[start:i], i
}

// Number is the number token starting at b[i], and the index past it.
func Number(b []byte, i int) ([]byte, int) {
	start := i
	for i < len(b) && (b[i] >= '0' && b[i] <= '9' || b[i] == '-' || b[i] == '+' || b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		i++
	}
	return b[start:i], i
}

// Next steps past the separator after an object member or array element: it returns the index
// of the next member or element, or of the closing bracket.
func Next(b []byte, i int) int {
	if i = Space(b, i); i < len(b) && b[i] == ',' {
		i = Space(b, i+1)
	}
	return i
}

// Value is the index just past the JSON value starting at b[i], in a valid document.
func Value(b []byte, i int) int {
	depth := 0
	for ; i < len(b); i++ {
		switch b[i] {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
			if depth == 0 {
				return i + 1
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth--; depth == 0 {
				return i + 1
			}
			if depth < 0 {
				return i // the end of the enclosing value
			}
		case ',', ' ', '\t', '\n', '\r', ':':
			if depth == 0 {
				return i
			}
		}
	}
	return i
}

// Unquote is the value of the JSON string literal s (quotes included) from a valid, UTF-8
// document, as encoding/json decodes it (a lone or mismatched surrogate escape is U+FFFD, as
// there), without encoding/json's second validity scan: the manifest a lorapack file carries is
// one such string of ~100 KB, escaped, in the header's metadata. FuzzUnquote holds it to
// encoding/json.
func Unquote(s []byte) string {
	s = s[1 : len(s)-1]
	if bytes.IndexByte(s, '\\') < 0 {
		return string(s)
	}
	out := make([]byte, 0, len(s))
	for {
		j := bytes.IndexByte(s, '\\')
		if j < 0 {
			return string(append(out, s...))
		}
		out, s = append(out, s[:j]...), s[j:]
		c := s[1]
		switch c {
		case 'b':
			c = '\b'
		case 'f':
			c = '\f'
		case 'n':
			c = '\n'
		case 'r':
			c = '\r'
		case 't':
			c = '\t'
		case 'u':
			r := hex4(s[2:6])
			s = s[6:]
			if utf16.IsSurrogate(r) {
				r2 := unicode.ReplacementChar
				if len(s) >= 6 && s[0] == '\\' && s[1] == 'u' {
					r2 = utf16.DecodeRune(r, hex4(s[2:6]))
				}
				if r = r2; r != unicode.ReplacementChar {
					s = s[6:] // a valid pair: its second half is consumed
				}
			}
			out = utf8.AppendRune(out, r)
			continue
		}
		out, s = append(out, c), s[2:] // '"', '\\', '/' stand for themselves
	}
}

// hex4 is the value of four hex digits (valid JSON guarantees them after \u).
func hex4(h []byte) rune {
	var r rune
	for _, c := range h[:4] {
		switch {
		case c <= '9':
			c -= '0'
		case c >= 'a':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}
