package chat

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The lexer reproduces Jinja2's with the environment transformers uses:
// trim_blocks=True (drop the first newline after a block or comment tag),
// lstrip_blocks=True (drop spaces/tabs before a block or comment tag on its
// own line), "-" / "+" whitespace control, newlines normalized to "\n" and
// one trailing newline of the template removed (keep_trailing_newline=False).

type tokKind int

const (
	tEOF        tokKind = iota
	tData               // literal template text
	tVarBegin           // {{
	tVarEnd             // }}
	tBlockBegin         // {%
	tBlockEnd           // %}
	tName
	tString
	tInt
	tFloat
	tOp
)

type token struct {
	kind tokKind
	val  string // data text, name, unescaped string, number text or operator
	line int
}

func (t token) String() string {
	switch t.kind {
	case tEOF:
		return "end of template"
	case tData:
		return "template data"
	case tVarBegin:
		return "'{{'"
	case tVarEnd:
		return "'}}'"
	case tBlockBegin:
		return "'{%'"
	case tBlockEnd:
		return "'%}'"
	case tString:
		return "string " + pyStrRepr(t.val)
	}
	return "'" + t.val + "'"
}

// SyntaxError is returned by Parse for malformed templates.
type SyntaxError struct {
	Line int
	Msg  string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("chat template syntax error: line %d: %s", e.Line, e.Msg)
}

type lexer struct {
	src  string
	pos  int
	line int
	toks []token
	// lineStarting mirrors Jinja2: true when the text that follows starts a
	// line (template start, or the previous tag ended with a newline), so
	// lstrip_blocks applies even without a newline in the text itself.
	lineStarting bool
}

func normalizeSource(src string) string {
	src = strings.ReplaceAll(src, "\r\n", "\n")
	src = strings.ReplaceAll(src, "\r", "\n")
	return strings.TrimSuffix(src, "\n")
}

func lex(src string) ([]token, error) {
	lx := &lexer{src: normalizeSource(src), line: 1, lineStarting: true}
	if err := lx.run(); err != nil {
		return nil, err
	}
	return lx.toks, nil
}

func (lx *lexer) errf(format string, args ...any) error {
	return &SyntaxError{Line: lx.line, Msg: fmt.Sprintf(format, args...)}
}

func (lx *lexer) emit(kind tokKind, val string) {
	lx.toks = append(lx.toks, token{kind: kind, val: val, line: lx.line})
}

// advance moves past s (which starts at lx.pos), counting lines.
func (lx *lexer) advance(n int) {
	lx.line += strings.Count(lx.src[lx.pos:lx.pos+n], "\n")
	lx.pos += n
}

func isPySpace(r rune) bool { return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f) }

func trimRightPySpace(s string) string { return strings.TrimRightFunc(s, isPySpace) }

func (lx *lexer) run() error {
	for lx.pos < len(lx.src) {
		rest := lx.src[lx.pos:]
		i := indexTagStart(rest)
		if i < 0 {
			lx.emitData(rest)
			lx.advance(len(rest))
			break
		}
		text := rest[:i]
		kind := rest[i+1] // '{', '%' or '#'
		sign := byte(0)
		if i+2 < len(rest) && (rest[i+2] == '-' || rest[i+2] == '+') {
			sign = rest[i+2]
		}
		switch {
		case sign == '-':
			text = trimRightPySpace(text)
		case sign != '+' && kind != '{':
			// lstrip_blocks: strip the whitespace between the last newline
			// (or the start of a line) and a block or comment tag.
			lpos := strings.LastIndexByte(text, '\n') + 1
			if (lpos > 0 || lx.lineStarting) && lpos < len(text) && strings.TrimLeftFunc(text[lpos:], isPySpace) == "" {
				text = text[:lpos]
			}
		}
		lx.emitData(text)
		lx.advance(i)
		tagLen := 2
		if sign != 0 {
			tagLen = 3
		}
		lx.lineStarting = false
		var err error
		switch kind {
		case '#':
			lx.advance(tagLen)
			err = lx.comment()
		case '{':
			lx.emit(tVarBegin, "{{")
			lx.advance(tagLen)
			err = lx.inside(false)
		case '%':
			if n, ok := rawStart(rest[i:]); ok {
				lx.lineStarting = rest[i+n-1] == '\n'
				lx.advance(n)
				err = lx.raw()
			} else {
				lx.emit(tBlockBegin, "{%")
				lx.advance(tagLen)
				err = lx.inside(true)
			}
		}
		if err != nil {
			return err
		}
	}
	lx.emit(tEOF, "")
	return nil
}

func (lx *lexer) emitData(s string) {
	if s != "" {
		lx.emit(tData, s)
	}
}

func indexTagStart(s string) int {
	for off := 0; ; {
		i := strings.IndexByte(s[off:], '{')
		if i < 0 || off+i+1 >= len(s) {
			return -1
		}
		j := off + i
		if c := s[j+1]; c == '{' || c == '%' || c == '#' {
			return j
		}
		off = j + 1
	}
}

// blockEnd matches the end of a block or comment tag at s and reports its
// length: "+%}" keeps what follows, "-%}" eats all following whitespace,
// plain "%}" eats one newline (trim_blocks).
func tagEnd(s string, closer byte) (int, bool) {
	end := string([]byte{closer, '}'})
	switch {
	case strings.HasPrefix(s, "+"+end):
		return 3, true
	case strings.HasPrefix(s, "-"+end):
		n := 3
		for n < len(s) {
			r, sz := utf8.DecodeRuneInString(s[n:])
			if !isPySpace(r) {
				break
			}
			n += sz
		}
		return n, true
	case strings.HasPrefix(s, end):
		if len(s) > 2 && s[2] == '\n' {
			return 3, true
		}
		return 2, true
	}
	return 0, false
}

func (lx *lexer) comment() error {
	startLine := lx.line
	for i := lx.pos; i < len(lx.src); i++ {
		c := lx.src[i]
		if c != '#' && c != '-' && c != '+' {
			continue
		}
		if n, ok := tagEnd(lx.src[i:], '#'); ok {
			lx.advance(i - lx.pos)
			lx.lineStarting = lx.src[lx.pos+n-1] == '\n'
			lx.advance(n)
			return nil
		}
	}
	lx.line = startLine
	return lx.errf("missing end of comment tag")
}

// rawStart matches "{%[-+]? raw [-]?%}"; the raw opening tag is never
// trimmed by trim_blocks in Jinja2.
func rawStart(s string) (int, bool) {
	n := 2
	if n < len(s) && (s[n] == '-' || s[n] == '+') {
		n++
	}
	n = skipSpace(s, n)
	if !strings.HasPrefix(s[n:], "raw") {
		return 0, false
	}
	n = skipSpace(s, n+3)
	if strings.HasPrefix(s[n:], "-%}") {
		n += 3
		return skipSpace(s, n), true
	}
	if strings.HasPrefix(s[n:], "%}") {
		return n + 2, true
	}
	return 0, false
}

func skipSpace(s string, n int) int {
	for n < len(s) {
		r, sz := utf8.DecodeRuneInString(s[n:])
		if !isPySpace(r) {
			break
		}
		n += sz
	}
	return n
}

func (lx *lexer) raw() error {
	startLine := lx.line
	for off := lx.pos; ; {
		i := strings.Index(lx.src[off:], "{%")
		if i < 0 {
			lx.line = startLine
			return lx.errf("missing end of raw directive")
		}
		j := off + i
		n := j + 2
		sign := byte(0)
		if n < len(lx.src) && (lx.src[n] == '-' || lx.src[n] == '+') {
			sign = lx.src[n]
			n++
		}
		n = skipSpace(lx.src, n)
		if !strings.HasPrefix(lx.src[n:], "endraw") {
			off = j + 2
			continue
		}
		n = skipSpace(lx.src, n+6)
		m, ok := tagEnd(lx.src[n:], '%')
		if !ok {
			off = j + 2
			continue
		}
		text := lx.src[lx.pos:j]
		if sign == '-' {
			text = trimRightPySpace(text)
		} else if sign != '+' {
			lpos := strings.LastIndexByte(text, '\n') + 1
			if (lpos > 0 || lx.lineStarting) && lpos < len(text) && strings.TrimLeftFunc(text[lpos:], isPySpace) == "" {
				text = text[:lpos]
			}
		}
		lx.emitData(text)
		lx.advance(n + m - lx.pos)
		lx.lineStarting = lx.src[lx.pos-1] == '\n'
		return nil
	}
}

// inside lexes the expression tokens of a {{ }} or {% %} tag up to its end.
// Like Jinja2, an end marker only counts when brackets are balanced.
func (lx *lexer) inside(block bool) error {
	startLine := lx.line
	var stack []byte
	for {
		if lx.pos >= len(lx.src) {
			lx.line = startLine
			if block {
				return lx.errf("unexpected end of template, expected '%%}'")
			}
			return lx.errf("unexpected end of template, expected '}}'")
		}
		rest := lx.src[lx.pos:]
		if len(stack) == 0 {
			if block {
				if n, ok := tagEnd(rest, '%'); ok {
					lx.emit(tBlockEnd, "%}")
					lx.lineStarting = rest[n-1] == '\n'
					lx.advance(n)
					return nil
				}
			} else {
				n := 0
				if strings.HasPrefix(rest, "-}}") {
					n = skipSpace(rest, 3)
				} else if strings.HasPrefix(rest, "}}") {
					n = 2
				}
				if n > 0 {
					lx.emit(tVarEnd, "}}")
					lx.lineStarting = rest[n-1] == '\n'
					lx.advance(n)
					return nil
				}
			}
		}
		r, sz := utf8.DecodeRuneInString(rest)
		switch {
		case isPySpace(r):
			lx.advance(sz)
		case r == '\'' || r == '"':
			if err := lx.str(); err != nil {
				return err
			}
		case r >= '0' && r <= '9':
			lx.number()
		case r == '_' || unicode.IsLetter(r):
			n := 0
			for n < len(rest) {
				r, sz := utf8.DecodeRuneInString(rest[n:])
				if r != '_' && !unicode.IsLetter(r) && !unicode.IsDigit(r) {
					break
				}
				n += sz
			}
			lx.emit(tName, rest[:n])
			lx.advance(n)
		default:
			op := matchOp(rest)
			if op == "" {
				return lx.errf("unexpected char %s", pyStrRepr(string(r)))
			}
			switch op {
			case "(", "[", "{":
				stack = append(stack, map[string]byte{"(": ')', "[": ']', "{": '}'}[op])
			case ")", "]", "}":
				if len(stack) == 0 {
					return lx.errf("unexpected '%s'", op)
				}
				if want := stack[len(stack)-1]; want != op[0] {
					return lx.errf("unexpected '%s', expected '%c'", op, want)
				}
				stack = stack[:len(stack)-1]
			}
			lx.emit(tOp, op)
			lx.advance(len(op))
		}
	}
}

var operators = []string{"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~",
	"[", "]", "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"}

func matchOp(s string) string {
	for _, op := range operators {
		if strings.HasPrefix(s, op) {
			return op
		}
	}
	return ""
}

// number lexes a numeric literal with Jinja2's rules: floats first
// ("1.5", "1e3", "1_000.5", not directly after a "."), then integers
// "0b101", "0o17", "0x1f", "[1-9](_?[0-9])*" or zeros; so "010" is the
// integer 0 followed by 10, a syntax error as in Jinja2.
func (lx *lexer) number() {
	rest := lx.src[lx.pos:]
	// digitRun matches (\d+_)*\d+ at i and returns its end, or -1.
	digitRun := func(i int) int {
		n := i
		for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
			n++
			if n+1 < len(rest) && rest[n] == '_' && rest[n+1] >= '0' && rest[n+1] <= '9' {
				n++
			}
		}
		if n == i {
			return -1
		}
		return n
	}
	exponent := func(i int) int {
		if i < len(rest) && (rest[i] == 'e' || rest[i] == 'E') {
			j := i + 1
			if j < len(rest) && (rest[j] == '+' || rest[j] == '-') {
				j++
			}
			return digitRun(j)
		}
		return -1
	}
	if lx.pos == 0 || lx.src[lx.pos-1] != '.' {
		if n := digitRun(0); n > 0 {
			end := -1
			if n < len(rest) && rest[n] == '.' {
				if m := digitRun(n + 1); m > 0 {
					end = m
					if e := exponent(m); e > 0 {
						end = e
					}
				}
			} else if e := exponent(n); e > 0 {
				end = e
			}
			if end > 0 {
				lx.emit(tFloat, strings.ReplaceAll(rest[:end], "_", ""))
				lx.advance(end)
				return
			}
		}
	}
	n := 1
	isDigit := func(c byte) bool { return c >= '0' && c <= '9' }
	digitsOf := map[byte]func(byte) bool{
		'b': func(c byte) bool { return c == '0' || c == '1' },
		'o': func(c byte) bool { return c >= '0' && c <= '7' },
		'x': isHexDigit,
	}
	// run consumes (_?d)+ style digits from n.
	run := func(ok func(byte) bool) {
		for n < len(rest) {
			if ok(rest[n]) {
				n++
			} else if rest[n] == '_' && n+1 < len(rest) && ok(rest[n+1]) {
				n += 2
			} else {
				break
			}
		}
	}
	switch {
	case rest[0] == '0' && len(rest) > 2 && digitsOf[rest[1]|0x20] != nil && digitsOf[rest[1]|0x20](rest[2]):
		n = 2
		run(digitsOf[rest[1]|0x20])
	case rest[0] == '0':
		run(func(c byte) bool { return c == '0' })
	default:
		run(isDigit)
	}
	lx.emit(tInt, strings.ReplaceAll(rest[:n], "_", ""))
	lx.advance(n)
}

// str lexes a quoted string and applies Python's escape sequences, as
// Jinja2 does with the "unicode-escape" codec (unknown escapes stay as-is).
func (lx *lexer) str() error {
	rest := lx.src[lx.pos:]
	q := rest[0]
	var b strings.Builder
	for i := 1; i < len(rest); {
		c := rest[i]
		switch c {
		case q:
			lx.emit(tString, b.String())
			lx.advance(i + 1)
			return nil
		case '\\':
			if i+1 >= len(rest) {
				i++
				continue
			}
			n := unescape(&b, rest[i+1:])
			i += 1 + n
		default:
			b.WriteByte(c)
			i++
		}
	}
	return lx.errf("unterminated string")
}

// unescape writes the meaning of the escape whose body (after the
// backslash) starts s, and returns how many bytes of s it used.
func unescape(b *strings.Builder, s string) int {
	simple := map[byte]string{'n': "\n", 't': "\t", 'r': "\r", '\\': "\\", '\'': "'", '"': "\"",
		'a': "\a", 'b': "\b", 'f': "\f", 'v': "\v", '\n': ""}
	if v, ok := simple[s[0]]; ok {
		b.WriteString(v)
		return 1
	}
	hexRune := func(n int) (int, bool) {
		if len(s) < 1+n {
			return 0, false
		}
		var r rune
		for _, c := range s[1 : 1+n] {
			d := strings.IndexRune("0123456789abcdef", unicode.ToLower(c))
			if d < 0 {
				return 0, false
			}
			r = r*16 + rune(d)
		}
		if r > unicode.MaxRune || (r >= 0xd800 && r < 0xe000) {
			r = utf8.RuneError
		}
		b.WriteRune(r)
		return 1 + n, true
	}
	switch s[0] {
	case 'x':
		if n, ok := hexRune(2); ok {
			return n
		}
	case 'u':
		if n, ok := hexRune(4); ok {
			return n
		}
	case 'U':
		if n, ok := hexRune(8); ok {
			return n
		}
	case '0', '1', '2', '3', '4', '5', '6', '7':
		n, r := 0, rune(0)
		for n < 3 && n < len(s) && s[n] >= '0' && s[n] <= '7' {
			r = r*8 + rune(s[n]-'0')
			n++
		}
		b.WriteRune(r)
		return n
	}
	b.WriteByte('\\')
	return 0
}

func isHexDigit(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}
