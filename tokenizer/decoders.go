package tokenizer

import (
	"encoding/json"
	"strings"
	"unicode/utf8"
)

// Decoders are implemented as streaming stages so that Decode and
// StreamDecoder share one code path: Decode is "push every token, then
// flush", which makes the stream's concatenated deltas equal to Decode by
// construction. Each stage reproduces the batch behaviour of the HF decoder
// of the same name (decoders/*.rs) on the whole token list.

// piece is a chunk of decoder output. HF decoders work on lists of tokens;
// cont marks a chunk that continues the previous token rather than starting a
// new one (ByteLevel and Fuse turn the whole list into a single token, which
// we emit incrementally as continuation chunks).
type piece struct {
	text string
	cont bool
}

type emitFn func(piece)

type decStage interface {
	push(p piece, emit emitFn)
	flush(emit emitFn)
}

// decoderSpec builds fresh stage state for one decode.
type decoderSpec interface {
	newStage() decStage
	// wholeTokens reports whether the stage needs complete tokens as input
	// (otherwise it copes with continuation chunks itself).
	wholeTokens() bool
	// emitsCont reports whether the stage may emit continuation chunks.
	emitsCont(inputCont bool) bool
}

// ---- ByteLevel ----

type decByteLevel struct{}

func (decByteLevel) newStage() decStage  { return &byteLevelStage{} }
func (decByteLevel) wholeTokens() bool   { return true }
func (decByteLevel) emitsCont(bool) bool { return true }

type byteLevelStage struct {
	pending []byte
	started bool
}

func (s *byteLevelStage) push(p piece, emit emitFn) {
	// A token made only of mapped characters contributes their bytes; any
	// other token (e.g. an added token with a space) contributes its raw UTF-8.
	mark := len(s.pending)
	for _, r := range p.text {
		if r >= rune(len(runeToByte)) || runeToByte[r] < 0 {
			s.pending = append(s.pending[:mark], p.text...)
			break
		}
		s.pending = append(s.pending, byte(runeToByte[r]))
	}
	// All tokens are lossily decoded as one byte string; emit what can no
	// longer change and keep a trailing incomplete UTF-8 sequence.
	k := stableUTF8Prefix(s.pending)
	if k > 0 {
		emit(piece{lossyUTF8(s.pending[:k]), s.started})
		s.started = true
		s.pending = append(s.pending[:0], s.pending[k:]...)
	}
}

func (s *byteLevelStage) flush(emit emitFn) {
	if len(s.pending) > 0 || !s.started {
		emit(piece{lossyUTF8(s.pending), s.started})
		s.started = true
		s.pending = s.pending[:0]
	}
}

// ---- Replace ----

type decReplace struct {
	pat     *pattern
	content string
}

func (d decReplace) newStage() decStage { return replaceStage{d} }
func (decReplace) wholeTokens() bool    { return true }
func (decReplace) emitsCont(bool) bool  { return false }

type replaceStage struct{ d decReplace }

func (s replaceStage) push(p piece, emit emitFn) {
	emit(piece{s.d.pat.replaceAll(p.text, s.d.content), false})
}
func (replaceStage) flush(emitFn) {}

// ---- ByteFallback ----

type decByteFallback struct{}

func (decByteFallback) newStage() decStage { return &byteFallbackStage{} }
func (decByteFallback) wholeTokens() bool  { return true }
func (decByteFallback) emitsCont(bool) bool {
	return false
}

// byteFallbackStage turns runs of "<0xNN>" tokens into text: the whole run
// if it is valid UTF-8, otherwise one U+FFFD per byte. A run is therefore
// held back until a non-byte token (or the end) closes it.
type byteFallbackStage struct{ run []byte }

func parseByteToken(t string) (byte, bool) {
	if len(t) != 6 || !strings.HasPrefix(t, "<0x") || t[5] != '>' {
		return 0, false
	}
	var v byte
	for _, c := range []byte(t[3:5]) {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | (c - '0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | (c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			v = v<<4 | (c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return v, true
}

func (s *byteFallbackStage) push(p piece, emit emitFn) {
	if b, ok := parseByteToken(p.text); ok {
		s.run = append(s.run, b)
		return
	}
	s.flush(emit)
	emit(piece{p.text, false})
}

func (s *byteFallbackStage) flush(emit emitFn) {
	if len(s.run) == 0 {
		return
	}
	if utf8.Valid(s.run) {
		emit(piece{string(s.run), false})
	} else {
		for range s.run {
			emit(piece{"\uFFFD", false})
		}
	}
	s.run = s.run[:0]
}

// ---- Fuse ----

type decFuse struct{}

func (decFuse) newStage() decStage  { return &fuseStage{} }
func (decFuse) wholeTokens() bool   { return false }
func (decFuse) emitsCont(bool) bool { return true }

type fuseStage struct{ started bool }

func (s *fuseStage) push(p piece, emit emitFn) {
	emit(piece{p.text, s.started})
	s.started = true
}

func (s *fuseStage) flush(emit emitFn) {
	if !s.started { // HF's Fuse yields one (empty) token even for no input
		emit(piece{"", false})
		s.started = true
	}
}

// ---- Strip ----

type decStrip struct {
	content     rune
	start, stop int
}

func (d decStrip) newStage() decStage          { return &stripStage{d: d} }
func (decStrip) wholeTokens() bool             { return false }
func (decStrip) emitsCont(inputCont bool) bool { return inputCont }

// stripStage removes up to start leading and stop trailing content chars of
// every token. Trailing candidates are held back until the token ends.
type stripStage struct {
	d        decStrip
	inToken  bool
	leadSeen int  // chars of the current token examined for leading strip
	leadDone bool // a non-content char (or start chars) ended leading strip
	held     []byte
	heldN    int // chars in held (all equal to content)
	emitted  bool
}

func (s *stripStage) endToken(emit emitFn) {
	if !s.inToken {
		return
	}
	// Drop up to stop held trailing content chars; keep the rest.
	keep := s.heldN - s.d.stop
	if keep > 0 {
		emit(piece{strings.Repeat(string(s.d.content), keep), s.emitted})
		s.emitted = true
	}
	s.held, s.heldN, s.inToken = s.held[:0], 0, false
}

func (s *stripStage) push(p piece, emit emitFn) {
	text := p.text
	if !p.cont {
		s.endToken(emit)
		s.inToken, s.leadSeen, s.leadDone, s.emitted = true, 0, false, false
		// Announce the token even if all of it ends up stripped, so the
		// token boundary survives for later stages.
		emit(piece{"", false})
		s.emitted = true
	}
	if !s.inToken { // continuation without a start: treat as start
		s.inToken = true
	}
	for !s.leadDone && text != "" {
		if s.leadSeen >= s.d.start {
			s.leadDone = true
			break
		}
		r, size := utf8.DecodeRuneInString(text)
		s.leadSeen++
		if r != s.d.content {
			s.leadDone = true
			break
		}
		text = text[size:]
	}
	if text == "" {
		return
	}
	// Split text into body + trailing run of content chars (held back only
	// when trailing chars may be stripped).
	cut := len(text)
	n := 0
	for cut > 0 && s.d.stop > 0 {
		r, size := utf8.DecodeLastRuneInString(text[:cut])
		if r != s.d.content {
			break
		}
		cut -= size
		n++
	}
	if cut > 0 {
		out := string(s.held) + text[:cut]
		emit(piece{out, true})
		s.held, s.heldN = s.held[:0], 0
	}
	s.held = append(s.held, text[cut:]...)
	s.heldN += n
}

func (s *stripStage) flush(emit emitFn) { s.endToken(emit) }

// ---- Metaspace ----

// decMetaspace turns the replacement char back into spaces; in the very
// first token HF drops every replacement char instead (unless the prepend
// scheme is "never"), undoing the prefix the pre-tokenizer added.
type decMetaspace struct {
	replacement rune
	scheme      prependScheme
}

func (d decMetaspace) newStage() decStage { return &metaspaceStage{d: d} }
func (decMetaspace) wholeTokens() bool    { return true }
func (decMetaspace) emitsCont(bool) bool  { return false }

type metaspaceStage struct {
	d    decMetaspace
	seen bool
}

func (s *metaspaceStage) push(p piece, emit emitFn) {
	first := !s.seen
	s.seen = true
	var b strings.Builder
	for _, r := range p.text {
		switch {
		case r != s.d.replacement:
			b.WriteRune(r)
		case first && s.d.scheme != prependNever:
		default:
			b.WriteByte(' ')
		}
	}
	emit(piece{b.String(), false})
}
func (metaspaceStage) flush(emitFn) {}

// ---- no decoder: HF joins tokens with spaces ----

type decJoin struct{}

func (decJoin) newStage() decStage  { return &joinStage{} }
func (decJoin) wholeTokens() bool   { return false }
func (decJoin) emitsCont(bool) bool { return true }

type joinStage struct{ started bool }

func (s *joinStage) push(p piece, emit emitFn) {
	if !p.cont && s.started {
		emit(piece{" " + p.text, true})
		return
	}
	emit(piece{p.text, s.started})
	s.started = true
}
func (joinStage) flush(emitFn) {}

// ---- chain ----

// decoderChain is an ordered list of specs (Sequence flattened).
type decoderChain []decoderSpec

func (c decoderChain) newState() *chainState {
	st := &chainState{}
	cont := false // input tokens from the vocabulary are whole
	for _, sp := range c {
		stage := sp.newStage()
		if sp.wholeTokens() && cont {
			stage = &assembler{inner: stage}
		}
		st.stages = append(st.stages, stage)
		cont = sp.emitsCont(cont)
	}
	st.emits = make([]emitFn, len(st.stages))
	for i := range st.emits {
		st.emits[i] = func(q piece) { st.run(i+1, q) }
	}
	return st
}

type chainState struct {
	stages []decStage
	emits  []emitFn // emits[i] feeds stage i+1 (or the output); built once
	out    strings.Builder
}

func (st *chainState) run(i int, p piece) {
	if i == len(st.stages) {
		st.out.WriteString(p.text)
		return
	}
	st.stages[i].push(p, st.emits[i])
}

// push feeds one vocabulary token and returns the newly final text.
func (st *chainState) push(token string) string {
	st.out.Reset()
	st.run(0, piece{token, false})
	return st.out.String()
}

// flush ends the input and returns the remaining text.
func (st *chainState) flush() string {
	st.out.Reset()
	st.flushInto()
	return st.out.String()
}

// pushInto and flushInto accumulate into st.out (whole-sequence Decode).
func (st *chainState) pushInto(token string) { st.run(0, piece{token, false}) }

func (st *chainState) flushInto() {
	for i := range st.stages {
		st.stages[i].flush(st.emits[i])
	}
}

// assembler collects continuation chunks into whole tokens for stages that
// need them (a per-token Replace after a Fuse, say).
type assembler struct {
	inner decStage
	buf   strings.Builder
	have  bool
}

func (a *assembler) push(p piece, emit emitFn) {
	if !p.cont && a.have {
		a.inner.push(piece{a.buf.String(), false}, emit)
		a.buf.Reset()
	}
	a.buf.WriteString(p.text)
	a.have = true
}

func (a *assembler) flush(emit emitFn) {
	if a.have {
		a.inner.push(piece{a.buf.String(), false}, emit)
		a.buf.Reset()
		a.have = false
	}
	a.inner.flush(emit)
}

func parseDecoder(raw json.RawMessage) (decoderChain, error) {
	if isNull(raw) {
		return decoderChain{decJoin{}}, nil
	}
	var chain decoderChain
	if err := appendDecoder(&chain, raw); err != nil {
		return nil, err
	}
	return chain, nil
}

func appendDecoder(chain *decoderChain, raw json.RawMessage) error {
	var head rawComponent
	if err := json.Unmarshal(raw, &head); err != nil {
		return malformed("decoder", "%v", err)
	}
	switch head.Type {
	case "Sequence":
		var v struct {
			Decoders []json.RawMessage `json:"decoders"`
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return malformed("decoder.decoders", "%v", err)
		}
		for _, r := range v.Decoders {
			if err := appendDecoder(chain, r); err != nil {
				return err
			}
		}
		return nil
	case "ByteLevel":
		// add_prefix_space/trim_offsets only affect offsets when decoding.
		*chain = append(*chain, decByteLevel{})
		return nil
	case "ByteFallback":
		*chain = append(*chain, decByteFallback{})
		return nil
	case "Fuse":
		*chain = append(*chain, decFuse{})
		return nil
	case "Replace":
		var v struct {
			Pattern json.RawMessage `json:"pattern"`
			Content *string         `json:"content"`
		}
		if err := json.Unmarshal(raw, &v); err != nil || v.Content == nil {
			return malformed("decoder.content", "missing or not a string")
		}
		p, err := parsePattern(v.Pattern, "decoder.pattern")
		if err != nil {
			return err
		}
		*chain = append(*chain, decReplace{p, *v.Content})
		return nil
	case "Strip":
		var v struct {
			Content *string `json:"content"`
			Start   int     `json:"start"`
			Stop    int     `json:"stop"`
		}
		if err := json.Unmarshal(raw, &v); err != nil || v.Content == nil || utf8.RuneCountInString(*v.Content) != 1 || v.Start < 0 || v.Stop < 0 {
			return malformed("decoder.content", "Strip needs a one-character content and non-negative start/stop")
		}
		r, _ := utf8.DecodeRuneInString(*v.Content)
		*chain = append(*chain, decStrip{content: r, start: v.Start, stop: v.Stop})
		return nil
	case "Metaspace":
		r, err := parseReplacement(raw)
		if err != nil {
			return malformed("decoder.replacement", "%v", err)
		}
		scheme, _, err := parsePrependScheme(raw)
		if err != nil {
			return malformed("decoder.prepend_scheme", "%v", err)
		}
		*chain = append(*chain, decMetaspace{replacement: r, scheme: scheme})
		return nil
	}
	return unsupported("decoder", head.Type)
}
