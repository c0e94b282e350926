package tokenizer

import "strings"

// TokenBytes returns the bytes id adds to the output when it follows other text: what
// constrained decoding matches a token against. A byte-level token gives its bytes (possibly
// part of a UTF-8 character), a byte-fallback token ("<0x0A>") its byte, and any other token
// the text the decoder chain adds for it after a plain token (so a SentencePiece "▁word" is
// " word", its leading space kept). Special tokens have no bytes (false).
func (t *Tokenizer) TokenBytes(id int) ([]byte, bool) {
	tok, ok := t.tokenFor(id)
	if !ok || t.special[tok] {
		return nil, false
	}
	byteLevel, byteFallback := false, false
	for _, sp := range t.decoder {
		switch sp.(type) {
		case decByteLevel:
			byteLevel = true
		case decByteFallback:
			byteFallback = true
		}
	}
	if byteFallback {
		if b, ok := parseByteToken(tok); ok {
			return []byte{b}, true
		}
	}
	if byteLevel {
		out := make([]byte, 0, len(tok))
		for _, r := range tok {
			if r >= rune(len(runeToByte)) || runeToByte[r] < 0 {
				return []byte(tok), true // as byteLevelStage: an unmapped token is raw UTF-8
			}
			out = append(out, byte(runeToByte[r]))
		}
		return out, true
	}
	// The decoder's output for an anchor token, then for anchor + tok: tok's text is the
	// difference (first-token rules such as Metaspace's dropped prefix apply to the anchor).
	const anchor = "a"
	st := t.decoder.newState()
	st.pushInto(anchor)
	st.flushInto()
	base := st.out.String()
	st = t.decoder.newState()
	st.pushInto(anchor)
	st.pushInto(tok)
	st.flushInto()
	full := st.out.String()
	if !strings.HasPrefix(full, base) {
		return []byte(tok), true
	}
	return []byte(full[len(base):]), true
}
