package tokenizer

import "fmt"

// StreamDecoder detokenizes one id at a time for streaming output. Deltas
// are always valid UTF-8 and their concatenation plus Flush equals Decode of
// all pushed ids: text that later ids could still change (an incomplete UTF-8
// sequence, an open run of byte-fallback tokens, a trailing character a Strip
// decoder may remove) is held back until it is final.
type StreamDecoder struct {
	t    *Tokenizer
	skip bool
	st   *chainState
}

// NewStreamDecoder starts an incremental decode.
func (t *Tokenizer) NewStreamDecoder(skipSpecialTokens bool) *StreamDecoder {
	return &StreamDecoder{t: t, skip: skipSpecialTokens, st: t.decoder.newState()}
}

// Push adds one id and returns the text that became final.
func (d *StreamDecoder) Push(id int) (string, error) {
	tok, ok := d.t.tokenFor(id)
	if !ok {
		return "", fmt.Errorf("%w: %d (vocab size %d)", ErrUnknownID, id, d.t.vocabSize)
	}
	if d.skip && d.t.special[tok] {
		return "", nil
	}
	return d.st.push(tok), nil
}

// Flush returns whatever was held back; the decoder starts over afterwards.
func (d *StreamDecoder) Flush() string {
	s := d.st.flush()
	d.st = d.t.decoder.newState()
	return s
}
