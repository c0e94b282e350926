package tokenizer

import "unicode/utf8"

// GPT-2's reversible byte<->unicode mapping used by the ByteLevel
// pre-tokenizer and decoder: printable Latin-1 bytes map to themselves, the
// others to U+0100 upward, so every byte is a visible, non-space character.
var (
	byteToRune [256]rune
	// runeToByte inverts byteToRune; -1 for runes outside the mapping. All
	// mapped runes are below 0x144.
	runeToByte [0x144]int16
	// gpt2ByteOrder lists bytes in the order GPT-2's vocab assigns ids 0..255.
	gpt2ByteOrder [256]byte
)

func init() {
	n := 0
	used := [256]bool{}
	add := func(lo, hi int) {
		for b := lo; b <= hi; b++ {
			byteToRune[b] = rune(b)
			used[b] = true
			gpt2ByteOrder[n] = byte(b)
			n++
		}
	}
	add('!', '~')
	add(0xA1, 0xAC)
	add(0xAE, 0xFF)
	extra := 0
	for b := 0; b < 256; b++ {
		if !used[b] {
			byteToRune[b] = rune(256 + extra)
			extra++
			gpt2ByteOrder[n] = byte(b)
			n++
		}
	}
	for i := range runeToByte {
		runeToByte[i] = -1
	}
	for b := 0; b < 256; b++ {
		runeToByte[byteToRune[b]] = int16(b)
	}
}

// byteLevelEncode maps every byte of s to its GPT-2 character.
func byteLevelEncode(s string) string {
	buf := make([]byte, 0, len(s)*2)
	for i := 0; i < len(s); i++ {
		buf = utf8.AppendRune(buf, byteToRune[s[i]])
	}
	return string(buf)
}

// utf8SeqLen returns, for a lead byte, the sequence length and the valid range
// of the second byte (Unicode Table 3-7). n == 0 means b cannot start a sequence.
func utf8SeqLen(b byte) (n int, lo, hi byte) {
	switch {
	case b < 0x80:
		return 1, 0, 0
	case b >= 0xC2 && b <= 0xDF:
		return 2, 0x80, 0xBF
	case b == 0xE0:
		return 3, 0xA0, 0xBF
	case b == 0xED:
		return 3, 0x80, 0x9F
	case b >= 0xE1 && b <= 0xEF:
		return 3, 0x80, 0xBF
	case b == 0xF0:
		return 4, 0x90, 0xBF
	case b >= 0xF1 && b <= 0xF3:
		return 4, 0x80, 0xBF
	case b == 0xF4:
		return 4, 0x80, 0x8F
	}
	return 0, 0, 0
}

// scanUTF8 reports the unit starting at b[0]: its length in bytes, whether it
// is a valid character, and whether it is an incomplete-but-valid prefix that
// was cut short by the end of b (so more bytes could still complete it).
// Invalid units are "maximal subparts", the unit Rust's from_utf8_lossy
// replaces with a single U+FFFD.
func scanUTF8(b []byte) (n int, valid, truncated bool) {
	need, lo, hi := utf8SeqLen(b[0])
	if need == 0 {
		return 1, false, false
	}
	if need == 1 {
		return 1, true, false
	}
	i := 1
	for ; i < need; i++ {
		if i >= len(b) {
			return i, false, true
		}
		c := b[i]
		if i == 1 {
			if c < lo || c > hi {
				return 1, false, false
			}
		} else if c < 0x80 || c > 0xBF {
			return i, false, false
		}
	}
	return need, true, false
}

// lossyUTF8 mirrors Rust's String::from_utf8_lossy: each maximal invalid
// subpart becomes one U+FFFD (Go's strings.ToValidUTF8 would differ).
func lossyUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	out := make([]byte, 0, len(b)+8)
	for i := 0; i < len(b); {
		n, valid, _ := scanUTF8(b[i:])
		if valid {
			out = append(out, b[i:i+n]...)
		} else {
			out = append(out, "\uFFFD"...)
		}
		i += n
	}
	return string(out)
}

// stableUTF8Prefix returns the length of the longest prefix of b whose lossy
// decoding cannot change when more bytes are appended: everything except a
// trailing truncated sequence.
func stableUTF8Prefix(b []byte) int {
	// A truncated sequence is at most 3 bytes, so only the tail needs scanning,
	// but it must be scanned from a unit boundary; walk back to one.
	start := len(b) - 3
	if start < 0 {
		start = 0
	}
	for start > 0 && b[start]&0xC0 == 0x80 {
		start--
	}
	// start is now a lead byte (or 0); units before it are unaffected by what follows
	// only if a unit boundary lies at start. A lead byte always begins a new unit
	// unless it is swallowed by an earlier lead, which cannot happen: continuation
	// ranges exclude lead bytes.
	for i := start; i < len(b); {
		n, _, truncated := scanUTF8(b[i:])
		if truncated {
			return i
		}
		i += n
	}
	return len(b)
}
