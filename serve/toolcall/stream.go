package toolcall

import (
	"encoding/json"
	"strings"
)

// Delta is one piece of parsed output: text outside calls (Call false, Content), the start of
// call Index (Start, Name; Arguments ""), or a fragment of call Index's arguments.
type Delta struct {
	Call      bool
	Content   string
	Index     int
	Start     bool
	Name      string
	Arguments string
}

// Stream parses one output as it is generated. Feed it the text as it comes; Finish when the
// output ends. It is not safe for concurrent use.
type Stream struct {
	f        *Format
	maxCalls int
	st       state
	buf      string          // fed and not yet consumed
	raw      strings.Builder // the current call's consumed text until it is committed
	dropped  string          // white space before the current call's markup
	heldWS   string          // trailing white space of content: dropped if markup follows
	skipWS   bool            // leading white space follows a call: dropped unless content came before
	emitted  bool            // content was sent
	array    bool            // mistral: the calls are a JSON array
	obj      objScan
	calls    int  // calls committed, kept or not
	open     bool // the current call is committed (its start was sent)
	suppress bool // the current call is over maxCalls: parsed, not sent
	out      []Delta
}

type state uint8

const (
	stText        state = iota // content; looking for the opening marker
	stLead                     // llama3_json: deciding whether the output starts with a call
	stPass                     // the rest is content
	stRegion                   // expecting a call object
	stObject                   // inside a call object (or mistral's arguments value)
	stAfter                    // after a call object
	stMistralHead              // after [TOOL_CALLS]: an array, or a name
	stMistralName              // reading name up to [ARGS]
)

const space = " \t\r\n"

// NewStream starts parsing one output; maxCalls bounds the calls it reports (0: no bound);
// later calls are parsed and dropped (parallel_tool_calls false).
func (f *Format) NewStream(maxCalls int) *Stream {
	s := &Stream{f: f, maxCalls: maxCalls}
	if f.kind == llama3JSON {
		s.st = stLead
	}
	return s
}

// Feed parses more output and returns what it decided (nil when it must wait).
func (s *Stream) Feed(text string) []Delta {
	s.buf += text
	for s.step() {
	}
	s.drain()
	return s.take()
}

// Finish ends the output: what was held back is decided (an unfinished call whose name is
// known is reported as far as it went; other held text is content).
func (s *Stream) Finish() []Delta {
	for s.step() {
	}
	switch s.st {
	case stText, stLead, stPass:
		s.content(s.buf)
	case stRegion, stMistralHead, stMistralName:
		if !s.open {
			s.flush()
		}
	case stObject:
		if !s.open && s.obj.hasName {
			s.commit(s.obj.name)
		}
		if !s.open {
			s.flush()
		}
	}
	s.buf = ""
	s.drain()
	if s.heldWS != "" && s.calls == 0 {
		s.out = append(s.out, Delta{Content: s.heldWS})
	}
	s.heldWS = ""
	return s.take()
}

func (s *Stream) take() []Delta {
	out := s.out
	s.out = nil
	return out
}

// content passes text on as content, holding back trailing white space (markup may follow; in
// a response with calls it is dropped at the end) and dropping white space after a call when
// no content came before it: white space that only separates markup is not content.
func (s *Stream) content(text string) {
	if s.skipWS && !s.emitted {
		text = strings.TrimLeft(text, space)
		if text == "" {
			return
		}
	}
	s.skipWS = false
	all := s.heldWS + text
	kept := strings.TrimRight(all, space)
	if kept != "" {
		s.emitted = true
		if n := len(s.out); n > 0 && !s.out[n-1].Call {
			s.out[n-1].Content += kept
		} else {
			s.out = append(s.out, Delta{Content: kept})
		}
	}
	s.heldWS = all[len(kept):]
}

// enter starts a call region after consumed markup.
func (s *Stream) enter(markup string, next state) {
	s.dropped, s.heldWS = s.heldWS, ""
	s.raw.Reset()
	s.raw.WriteString(markup)
	s.open, s.suppress = false, false
	s.st = next
}

// flush gives an uncommitted region back as content: it was not a call.
func (s *Stream) flush() {
	text := s.dropped + s.raw.String()
	s.dropped = ""
	s.raw.Reset()
	s.content(text)
	if s.f.kind == llama3JSON {
		s.st = stPass
	} else {
		s.st = stText
	}
}

// fail ends a region that stopped parsing: uncommitted, it was content; committed, the call
// ends where it went wrong.
func (s *Stream) fail() {
	if !s.open {
		s.flush()
		return
	}
	s.drain()
	s.open = false
	switch s.f.kind {
	case hermes:
		s.st = stAfter // skip to </tool_call>
	case llama3JSON:
		s.st = stPass
	default:
		s.st = stText
	}
}

// commit starts a call named name.
func (s *Stream) commit(name string) {
	s.open = true
	s.raw.Reset()
	s.dropped = ""
	index := s.calls
	s.calls++
	s.suppress = s.maxCalls > 0 && index >= s.maxCalls
	if !s.suppress {
		s.out = append(s.out, Delta{Call: true, Index: index, Start: true, Name: name})
	}
}

// drain sends the arguments parsed so far of a committed call (a string-valued arguments
// value only once it is complete).
func (s *Stream) drain() {
	if !s.open || len(s.obj.args) == 0 || s.obj.argsString && !s.obj.argsDone {
		return
	}
	if !s.suppress {
		s.out = append(s.out, Delta{Call: true, Index: s.calls - 1, Arguments: string(s.obj.args)})
	}
	s.obj.args = s.obj.args[:0]
}

// skipSpace consumes leading white space of buf into the region's raw text; false when buf
// is then empty.
func (s *Stream) skipSpace() bool {
	t := strings.TrimLeft(s.buf, space)
	s.raw.WriteString(s.buf[:len(s.buf)-len(t)])
	s.buf = t
	return t != ""
}

// step makes one decision; false when it needs more text.
func (s *Stream) step() bool {
	switch s.st {
	case stText:
		marker := hermesOpen
		next := stRegion
		if s.f.kind == mistral {
			marker, next = toolCallsMarker, stMistralHead
		}
		if i := strings.Index(s.buf, marker); i >= 0 {
			s.content(s.buf[:i])
			s.buf = s.buf[i+len(marker):]
			s.array = false
			s.enter(marker, next)
			return true
		}
		keep := partialSuffix(s.buf, marker)
		s.content(s.buf[:len(s.buf)-keep])
		s.buf = s.buf[len(s.buf)-keep:]
		return false
	case stPass:
		s.content(s.buf)
		s.buf = ""
		return false
	case stLead:
		t := strings.TrimLeft(s.buf, space)
		switch {
		case t == "" || strings.HasPrefix(pythonTag, t):
			return false
		case strings.HasPrefix(t, pythonTag):
			n := len(s.buf) - len(t) + len(pythonTag)
			s.enter(s.buf[:n], stRegion)
			s.buf = s.buf[n:]
		case t[0] == '{':
			s.enter(s.buf[:len(s.buf)-len(t)], stRegion)
			s.buf = t
		default:
			s.st = stPass
		}
		return true
	case stRegion:
		if !s.skipSpace() {
			return false
		}
		switch {
		case s.buf[0] == '{':
			s.obj = objScan{args: s.obj.args[:0]}
			s.open, s.suppress = false, false
			s.st = stObject
		case s.array && s.buf[0] == ']':
			s.buf = s.buf[1:]
			s.raw.Reset()
			s.st, s.skipWS = stText, true
		default:
			s.fail()
		}
		return true
	case stObject:
		return s.scanObject()
	case stAfter:
		return s.after()
	case stMistralHead:
		if !s.skipSpace() {
			return false
		}
		if s.buf[0] == '[' {
			s.raw.WriteByte('[')
			s.buf = s.buf[1:]
			s.array = true
			s.st = stRegion
		} else {
			s.st = stMistralName
		}
		return true
	case stMistralName:
		i := strings.Index(s.buf, argsMarker)
		if i < 0 {
			if len(s.buf) > 64+len(callIDMarker)+64+len(argsMarker) {
				s.fail()
				return true
			}
			return false
		}
		name := s.buf[:i]
		if j := strings.Index(name, callIDMarker); j >= 0 {
			name = name[:j] // mistral's own call id is not the API's
		}
		name = strings.TrimSpace(name)
		if !namePattern.MatchString(name) {
			s.fail()
			return true
		}
		s.buf = s.buf[i+len(argsMarker):]
		s.obj = objScan{st: osBeforeValue, valueOnly: true, field: fieldArgs, hasName: true, name: name, args: s.obj.args[:0]}
		s.commit(name)
		s.st = stObject
		return true
	}
	return false
}

// scanObject feeds buf to the call object's scanner.
func (s *Stream) scanObject() bool {
	for i := 0; i < len(s.buf); i++ {
		c := s.buf[i]
		if !s.obj.push(c) {
			s.buf = s.buf[i:]
			s.fail()
			return true
		}
		if !s.open {
			s.raw.WriteByte(c)
			if s.obj.hasName && (s.obj.argsSeen || s.obj.st == osDone) {
				s.commit(s.obj.name)
			}
		}
		if s.obj.st == osDone {
			s.buf = s.buf[i+1:]
			if !s.open {
				s.fail() // an object without a name is not a call
				return true
			}
			if !s.obj.argsSeen {
				s.obj.args = append(s.obj.args, "{}"...)
			}
			s.drain()
			s.open = false
			s.st = stAfter
			if s.f.kind == mistral && !s.array {
				s.st, s.skipWS = stText, true
			}
			return true
		}
	}
	s.buf = ""
	return false
}

// after reads what follows a call object: hermes's closing tag (anything before it is
// dropped), llama3_json's ";" before the next call, mistral's "," or "]".
func (s *Stream) after() bool {
	switch s.f.kind {
	case hermes:
		if i := strings.Index(s.buf, hermesClose); i >= 0 {
			s.buf = s.buf[i+len(hermesClose):]
			s.st, s.skipWS = stText, true
			return true
		}
		s.buf = s.buf[len(s.buf)-partialSuffix(s.buf, hermesClose):]
		return false
	case llama3JSON:
		t := strings.TrimLeft(s.buf, space)
		if t == "" {
			return false
		}
		if t[0] == ';' {
			s.buf = t[1:]
			s.enter("", stRegion)
			return true
		}
		s.buf = t
		s.st, s.skipWS = stPass, true
		return true
	default:
		t := strings.TrimLeft(s.buf, space)
		if t == "" {
			return false
		}
		s.buf = t[1:]
		switch t[0] {
		case ',':
			s.enter("", stRegion)
		case ']':
			s.st, s.skipWS = stText, true
		default:
			s.buf = t
			s.st = stText
		}
		return true
	}
}

// partialSuffix is the length of buf's longest suffix that is a proper prefix of marker: text
// that may still become the marker.
func partialSuffix(buf, marker string) int {
	for n := min(len(buf), len(marker)-1); n > 0; n-- {
		if strings.HasSuffix(buf, marker[:n]) {
			return n
		}
	}
	return 0
}

// objScan reads a call object {"name": ..., "arguments" | "parameters": ...} byte by byte,
// tolerant of key order and of other keys. The arguments value's bytes collect in args as
// they come (a string value is unquoted once complete).
type objScan struct {
	st         objState
	valueOnly  bool // scan one value (mistral's arguments after [ARGS]), not an object
	key        []byte
	keyEscaped bool
	field      field
	val        valScan
	nameRaw    []byte
	name       string
	hasName    bool
	argsSeen   bool
	argsString bool
	argsDone   bool
	argsRaw    []byte // a string value, quoted
	args       []byte // arguments not yet sent
}

type objState uint8

const (
	osOpen objState = iota
	osBeforeKey
	osKey
	osColon
	osBeforeValue
	osValue
	osAfterValue
	osDone
)

type field uint8

const (
	fieldOther field = iota
	fieldName
	fieldArgs
)

// maxKeyBytes bounds a key the scanner keeps: call keys are short.
const maxKeyBytes = 64

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// push consumes c; false when c cannot continue a call object.
func (o *objScan) push(c byte) bool {
	switch o.st {
	case osOpen:
		if c == '{' {
			o.st = osBeforeKey
			return true
		}
		return isSpace(c)
	case osBeforeKey:
		switch {
		case isSpace(c):
		case c == '"':
			o.st, o.key = osKey, o.key[:0]
		case c == '}':
			o.st = osDone
		default:
			return false
		}
		return true
	case osKey:
		switch {
		case o.keyEscaped:
			o.keyEscaped = false
		case c == '\\':
			o.keyEscaped = true
		case c == '"':
			o.st, o.field = osColon, fieldOther
			switch string(o.key) {
			case "name":
				if !o.hasName {
					o.field = fieldName
				}
			case "arguments", "parameters":
				if !o.argsSeen {
					o.field = fieldArgs
				}
			}
			return true
		}
		o.key = append(o.key, c)
		return len(o.key) <= maxKeyBytes
	case osColon:
		if c == ':' {
			o.st = osBeforeValue
			return true
		}
		return isSpace(c)
	case osBeforeValue:
		if isSpace(c) {
			return true
		}
		o.val = valScan{}
		o.st = osValue
		if o.field == fieldArgs {
			o.argsSeen, o.argsString = true, c == '"'
		}
		return o.value(c)
	case osValue:
		return o.value(c)
	case osAfterValue:
		switch {
		case isSpace(c):
		case c == ',':
			o.st = osBeforeKey
		case c == '}':
			o.st = osDone
		default:
			return false
		}
		return true
	}
	return false
}

// value feeds c to the current value.
func (o *objScan) value(c byte) bool {
	used, done, ok := o.val.push(c)
	if !ok {
		return false
	}
	if used {
		switch {
		case o.field == fieldName:
			o.nameRaw = append(o.nameRaw, c)
		case o.field == fieldArgs && o.argsString:
			o.argsRaw = append(o.argsRaw, c)
		case o.field == fieldArgs:
			o.args = append(o.args, c)
		}
	}
	if !done {
		return true
	}
	switch o.field {
	case fieldName:
		if json.Unmarshal(o.nameRaw, &o.name) != nil || o.val.kind != '"' || o.name == "" {
			return false
		}
		o.hasName = true
	case fieldArgs:
		if o.argsString {
			var text string
			if json.Unmarshal(o.argsRaw, &text) != nil {
				return false
			}
			o.args = append(o.args, text...)
		}
		o.argsDone = true
	}
	o.st = osAfterValue
	if o.valueOnly {
		o.st = osDone
		if !used {
			return false // a scalar ended by a byte that is not ours
		}
		return true
	}
	if !used {
		return o.push(c)
	}
	return true
}

// valScan finds where one JSON value ends: strings (with escapes), objects and arrays by
// depth, scalars at the first byte that cannot continue them. It does not validate.
type valScan struct {
	kind     byte
	depth    int
	inString bool
	escaped  bool
}

// push consumes c (used), and says whether the value ended; ok is false for a byte that
// cannot start a value.
func (v *valScan) push(c byte) (used, done, ok bool) {
	if v.kind == 0 {
		v.kind = c
		switch {
		case c == '{' || c == '[':
			v.depth = 1
		case c == '"':
			v.inString = true
		case c == '-' || c >= '0' && c <= '9' || c == 't' || c == 'f' || c == 'n':
		default:
			return false, false, false
		}
		return true, false, true
	}
	if v.inString {
		switch {
		case v.escaped:
			v.escaped = false
		case c == '\\':
			v.escaped = true
		case c == '"':
			v.inString = false
			return true, v.depth == 0, true
		}
		return true, false, true
	}
	if v.depth == 0 { // a scalar
		if c == '.' || c == '+' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
			return true, false, true
		}
		return false, true, true
	}
	switch c {
	case '"':
		v.inString = true
	case '{', '[':
		v.depth++
	case '}', ']':
		v.depth--
	}
	return true, v.depth == 0, true
}
