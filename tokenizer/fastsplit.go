package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// The Llama 3 and Qwen 2/3 split regexes (and GPT-2's, which ByteLevel
// with use_regex applies) are by far the most common
// pre-tokenizer patterns, and a backtracking regex engine spends most of the
// encode time on them. For exactly these patterns we use a hand-written
// scanner that reproduces the regex's leftmost-first alternation and
// backtracking; TestFastSplitMatchesRegex and FuzzFastSplit check it against
// regexp2 on every test text.
const (
	llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	qwenPattern   = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// fastMatcher returns, for a known regex, a function giving the end of the
// match that starts at i (these patterns match at every position), or nil.
func fastMatcher(re string) func(s string, i int) int {
	switch re {
	case llama3Pattern:
		return func(s string, i int) int { return matchLlamaLikeAt(s, i, 3) }
	case qwenPattern:
		return func(s string, i int) int { return matchLlamaLikeAt(s, i, 1) }
	case gpt2Pattern:
		return matchGPT2At
	}
	return nil
}

func isL(r rune) bool {
	if r < utf8.RuneSelf {
		return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z'
	}
	return unicode.IsLetter(r)
}

func isN(r rune) bool {
	if r < utf8.RuneSelf {
		return '0' <= r && r <= '9'
	}
	return unicode.IsNumber(r)
}

// isS is the regex \s: Unicode White_Space.
func isS(r rune) bool {
	if r < utf8.RuneSelf {
		return r == ' ' || '\t' <= r && r <= '\r'
	}
	return unicode.IsSpace(r)
}

func isCRLF(r rune) bool { return r == '\r' || r == '\n' }

func runeAt(s string, i int) (rune, int) {
	if i >= len(s) {
		return -1, 0
	}
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), 1
	}
	return utf8.DecodeRuneInString(s[i:])
}

// contractionLen matches (?i:'s|'t|'re|'ve|'m|'ll|'d) at i (s[i] == '\”).
func contractionLen(s string, i int) int {
	lower := func(j int) byte {
		if j >= len(s) {
			return 0
		}
		c := s[j]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		return c
	}
	switch c1 := lower(i + 1); c1 {
	case 's', 't', 'm', 'd':
		return 2
	case 'r':
		if lower(i+2) == 'e' {
			return 3
		}
	case 'v':
		if lower(i+2) == 'e' {
			return 3
		}
	case 'l':
		if lower(i+2) == 'l' {
			return 3
		}
	}
	return 0
}

// matchLlamaLikeAt returns the end of the match starting at i. Every
// character starts some alternative, so there is always a match at i.
func matchLlamaLikeAt(s string, i, maxDigits int) int {
	r, n := runeAt(s, i)
	// 1. contractions
	if r == '\'' {
		if l := contractionLen(s, i); l > 0 {
			return i + l
		}
	}
	// 2. [^\r\n\p{L}\p{N}]?\p{L}+
	{
		j := i
		if !isCRLF(r) && !isL(r) && !isN(r) {
			j += n
		}
		k := j
		for {
			c, m := runeAt(s, k)
			if m == 0 || !isL(c) {
				break
			}
			k += m
		}
		if k > j {
			return k
		}
	}
	// 3. \p{N}{1,maxDigits}
	if isN(r) {
		k := i
		for d := 0; d < maxDigits; d++ {
			c, m := runeAt(s, k)
			if m == 0 || !isN(c) {
				break
			}
			k += m
		}
		return k
	}
	// 4. ' '?[^\s\p{L}\p{N}]+[\r\n]*
	{
		j := i
		if r == ' ' {
			j++
		}
		k := j
		for {
			c, m := runeAt(s, k)
			if m == 0 || isS(c) || isL(c) || isN(c) {
				break
			}
			k += m
		}
		if k > j {
			for k < len(s) && (s[k] == '\r' || s[k] == '\n') {
				k++
			}
			return k
		}
	}
	// Only whitespace is left: r is \s (anything else matched above).
	// Find the whitespace run [i, j) and its last CR/LF.
	j, lastNL, prev := i, -1, i
	for {
		c, m := runeAt(s, j)
		if m == 0 || !isS(c) {
			break
		}
		if isCRLF(c) {
			lastNL = j
		}
		prev = j
		j += m
	}
	// 5. \s*[\r\n]+ : backtracking leaves \s* just before the last CR/LF.
	if lastNL >= 0 {
		return lastNL + 1
	}
	// 6. \s+(?!\S): whole run at the end of input, else all but its last char.
	if j == len(s) {
		return j
	}
	if prev > i {
		return prev
	}
	// 7. \s+
	return j
}

// matchGPT2At returns the end of gpt2Pattern's match starting at i:
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (contractions are case-sensitive here, unlike Llama 3's).
func matchGPT2At(s string, i int) int {
	r, n := runeAt(s, i)
	if r == '\'' && i+1 < len(s) {
		switch s[i+1] {
		case 's', 't', 'm', 'd':
			return i + 2
		case 'r', 'v':
			if i+2 < len(s) && s[i+2] == 'e' {
				return i + 3
			}
		case 'l':
			if i+2 < len(s) && s[i+2] == 'l' {
				return i + 3
			}
		}
	}
	j := i
	if r == ' ' {
		j += n
	}
	// ' ?' then one class run: letters, digits, or neither-nor-space. The
	// first character after the optional space picks the only alternative
	// that can match.
	if c, m := runeAt(s, j); m > 0 {
		var in func(rune) bool
		switch {
		case isL(c):
			in = isL
		case isN(c):
			in = isN
		case !isS(c):
			in = func(r rune) bool { return !isS(r) && !isL(r) && !isN(r) }
		}
		if in != nil {
			k := j + m
			for {
				c, m := runeAt(s, k)
				if m == 0 || !in(c) {
					return k
				}
				k += m
			}
		}
	}
	// Only whitespace is left: the run [i, end) and the start of its last char.
	end, prev := i, i
	for {
		c, m := runeAt(s, end)
		if m == 0 || !isS(c) {
			break
		}
		prev = end
		end += m
	}
	// \s+(?!\S): the whole run at the end of input, else all but its last char.
	if end == len(s) || prev == i {
		return end // the second case is the plain \s+ of one char
	}
	return prev
}
