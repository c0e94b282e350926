package model

import (
	"crypto/sha256"
	"testing"
)

// A stream's noted SHA-256 holds only for the slice it was noted for: none is given before one
// is noted, and none once Stream is replaced (another slice, or the same memory at another
// length), so a caller never takes a sum for bytes it was not computed over; struct copies keep it.
func TestNotedStreamSHA256HoldsForItsSliceOnly(t *testing.T) {
	stream := []byte("a q4 stream, header included")
	e := &EncodedTensor{Codec: "q4", Group: 32, Stream: stream}
	if _, ok := e.NotedStreamSHA256(); ok {
		t.Fatal("a sum given before any was noted")
	}
	sum := sha256.Sum256(stream)
	e.NoteStreamSHA256(sum)
	if got, ok := e.NotedStreamSHA256(); !ok || got != sum {
		t.Fatalf("noted %x, got %x (%v)", sum, got, ok)
	}
	copied := *e
	if got, ok := copied.NotedStreamSHA256(); !ok || got != sum {
		t.Fatal("a copy of the EncodedTensor lost its noted sum")
	}
	for what, other := range map[string][]byte{
		"an equal copy":  append([]byte(nil), stream...),
		"a shorter view": stream[:len(stream)-1],
		"a later view":   stream[1:],
		"nothing":        nil,
	} {
		c := *e
		c.Stream = other
		if _, ok := c.NotedStreamSHA256(); ok {
			t.Errorf("Stream replaced by %s still gives the noted sum", what)
		}
	}
}
