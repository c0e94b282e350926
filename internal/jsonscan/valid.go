package jsonscan

// maxDepth is encoding/json's nesting limit: a document nesting more objects and arrays than
// this is not valid to it, so not to Valid either.
const maxDepth = 10000

// plainByte marks the bytes that stand for themselves inside a JSON string: all but the
// quote, the backslash and the control characters below U+0020. Like encoding/json, Valid
// does not check UTF-8 (its callers do, once, over the whole document).
var plainByte = func() (t [256]bool) {
	for c := range t {
		t[c] = c >= 0x20 && c != '"' && c != '\\'
	}
	return t
}()

// Valid reports whether b is exactly one JSON value with optional whitespace around it, as
// encoding/json.Valid does, with the same answer for every input (its nesting limit
// included; FuzzValid holds the two to the same), in one pass without encoding/json's
// per-byte state calls: the loaders check every adapter file's header with it (~170 KB for a
// rank-16 Llama-3-8B lorapack file, then its ~100 KB manifest again), on the cold load's
// critical path.
func Valid(b []byte) bool {
	var stack []byte // '{' or '[' for each open object and array
	i := Space(b, 0)
	for {
		// A value starts at i.
		if i >= len(b) {
			return false
		}
		switch c := b[i]; c {
		case '{', '[':
			if len(stack) >= maxDepth {
				return false
			}
			closing := byte('}')
			if c == '[' {
				closing = ']'
			}
			if i = Space(b, i+1); i < len(b) && b[i] == closing {
				i++
				break // an empty object or array is a whole value
			}
			stack = append(stack, c)
			if c == '{' {
				if i = member(b, i); i < 0 {
					return false
				}
			}
			continue // its first member's value or element
		case '"':
			i = stringEnd(b, i)
		case 't':
			i = literal(b, i, "true")
		case 'f':
			i = literal(b, i, "false")
		case 'n':
			i = literal(b, i, "null")
		default:
			i = numberEnd(b, i)
		}
		if i < 0 {
			return false
		}
		// A value ended at i: close what it ends, then step to the next value.
		for {
			i = Space(b, i)
			if len(stack) == 0 {
				return i == len(b)
			}
			if i >= len(b) {
				return false
			}
			top := stack[len(stack)-1]
			if b[i] == ',' {
				if i = Space(b, i+1); top == '{' {
					if i = member(b, i); i < 0 {
						return false
					}
				}
				break
			}
			if b[i] != top+2 { // '{'+2 is '}', '['+2 is ']'
				return false
			}
			stack = stack[:len(stack)-1]
			i++
		}
	}
}

// member steps over an object member's key and colon at b[i] and the whitespace after them:
// the index of its value, or -1.
func member(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	if i = stringEnd(b, i); i < 0 {
		return -1
	}
	if i = Space(b, i); i >= len(b) || b[i] != ':' {
		return -1
	}
	return Space(b, i+1)
}

// stringEnd is the index past the string starting at b[i] (a quote), or -1 if it is not one.
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		if plainByte[b[i]] {
			continue
		}
		switch b[i] {
		case '"':
			return i + 1
		case '\\':
			if i+1 >= len(b) {
				return -1
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				if i+5 >= len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return -1
				}
				i += 5
			default:
				return -1
			}
		default: // a control character
			return -1
		}
	}
	return -1
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// literal is the index past word at b[i], or -1 if it is not there.
func literal(b []byte, i int, word string) int {
	if len(b)-i < len(word) || string(b[i:i+len(word)]) != word {
		return -1
	}
	return i + len(word)
}

// numberEnd is the index past the number starting at b[i] (-?(0|[1-9][0-9]*)(.[0-9]+)?
// ([eE][+-]?[0-9]+)?), or -1 if none starts there. What follows it is the caller's to check.
func numberEnd(b []byte, i int) int {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return -1
	case b[i] == '0':
		i++
	case b[i] >= '1' && b[i] <= '9':
		_, i = Digits(b, i+1)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		if i+1 >= len(b) || b[i+1] < '0' || b[i+1] > '9' {
			return -1
		}
		_, i = Digits(b, i+1)
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		if i++; i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return -1
		}
		_, i = Digits(b, i)
	}
	return i
}
