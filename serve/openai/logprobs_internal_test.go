package openai

import (
	"io"
	"log/slog"
	"slices"
	"strconv"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/serve"
)

func TestTokenText(t *testing.T) {
	b := cpu.New(1)
	defer b.Close()
	cfg, w, tok, _, err := demo.Build(b)
	if err != nil {
		t.Fatal(err)
	}
	e, err := serve.NewEngine(cfg, b, w, tok, serve.Options{MaxModelLen: 32, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	h := New(e, Options{})
	id := func(s string) int {
		i, ok := tok.TokenID(s)
		if !ok {
			t.Fatalf("no token %q", s)
		}
		return i
	}
	for _, c := range []struct {
		id    int
		asIDs bool
		text  string
		bytes []byte
	}{
		{id("A"), false, "A", []byte("A")},
		{id("Ġ"), false, " ", []byte(" ")},
		{id("â"), false, `bytes:\xe2`, []byte{0xe2}}, // first byte of a 3-byte character
		{id("<|im_end|>"), false, "<|im_end|>", []byte("<|im_end|>")},
		{id("A"), true, "token_id:" + strconv.Itoa(id("A")), []byte("A")},
	} {
		text, bs := h.tokenText(c.id, c.asIDs)
		if text != c.text || !slices.Equal(bs, c.bytes) {
			t.Errorf("token %d: got %q %v, want %q %v", c.id, text, bs, c.text, c.bytes)
		}
	}
}
