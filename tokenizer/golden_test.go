package tokenizer

import (
	"fmt"
	"strings"
	"testing"
)

// diffIDs describes the first difference between two id lists with context.
func diffIDs(tok *Tokenizer, got, want []int) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	if i == len(got) && i == len(want) {
		return ""
	}
	show := func(ids []int) string {
		lo, hi := max(i-3, 0), min(i+4, len(ids))
		var b strings.Builder
		for j := lo; j < hi; j++ {
			s, _ := tok.TokenString(ids[j])
			mark := ""
			if j == i {
				mark = ">>"
			}
			fmt.Fprintf(&b, " %s%d(%q)", mark, ids[j], s)
		}
		return b.String()
	}
	return fmt.Sprintf("first difference at index %d (got %d ids, want %d)\n  got: %s\n want: %s",
		i, len(got), len(want), show(got), show(want))
}

func TestGolden(t *testing.T) {
	for _, name := range testNames {
		t.Run(name, func(t *testing.T) {
			g := loadGolden(t, name)
			tok := loadTest(t, name)
			pass := 0
			for ci, c := range g.Cases {
				ok := true
				fail := func(format string, args ...any) {
					ok = false
					t.Errorf("case %d %q: %s", ci, c.Text, fmt.Sprintf(format, args...))
				}
				for _, v := range []struct {
					special bool
					want    []int
				}{{true, c.IDsSpecial}, {false, c.IDsPlain}} {
					got, err := tok.Encode(c.Text, v.special)
					if err != nil {
						fail("Encode(add_special=%v): %v", v.special, err)
						continue
					}
					if d := diffIDs(tok, got, v.want); d != "" {
						fail("Encode(add_special=%v): %s", v.special, d)
					}
				}
				if got, err := tok.Decode(c.IDsSpecial, false); err != nil || got != c.Decoded {
					fail("Decode(skip=false) = %q, %v; want %q", got, err, c.Decoded)
				}
				if got, err := tok.Decode(c.IDsSpecial, true); err != nil || got != c.DecodedSkipSpecial {
					fail("Decode(skip=true) = %q, %v; want %q", got, err, c.DecodedSkipSpecial)
				}
				if len(c.Pieces) != len(c.IDsPlain) {
					t.Fatalf("case %d: golden has %d pieces for %d ids", ci, len(c.Pieces), len(c.IDsPlain))
				}
				for i, id := range c.IDsPlain {
					if got, err := tok.Decode([]int{id}, false); err != nil || got != c.Pieces[i] {
						fail("Decode([%d]) = %q, %v; want %q", id, got, err, c.Pieces[i])
					}
				}
				if ok {
					pass++
				}
			}
			t.Logf("%s: %d/%d golden cases match HF tokenizers %s", name, pass, len(g.Cases), g.Version)
		})
	}
}

// TestStreamGolden pushes every golden case id by id: deltas must be valid
// UTF-8 and add up to Decode.
func TestStreamGolden(t *testing.T) {
	for _, name := range testNames {
		t.Run(name, func(t *testing.T) {
			g := loadGolden(t, name)
			tok := loadTest(t, name)
			for ci, c := range g.Cases {
				for _, skip := range []bool{false, true} {
					checkStream(t, tok, c.IDsSpecial, skip, fmt.Sprintf("case %d %q", ci, c.Text))
				}
			}
		})
	}
}

func checkStream(t *testing.T, tok *Tokenizer, ids []int, skip bool, label string) {
	t.Helper()
	want, err := tok.Decode(ids, skip)
	if err != nil {
		t.Fatalf("%s: Decode: %v", label, err)
	}
	d := tok.NewStreamDecoder(skip)
	var b strings.Builder
	for i, id := range ids {
		delta, err := d.Push(id)
		if err != nil {
			t.Fatalf("%s: Push(%d): %v", label, id, err)
		}
		if !utf8Valid(delta) {
			t.Errorf("%s skip=%v: delta %d %q is not valid UTF-8", label, skip, i, delta)
		}
		b.WriteString(delta)
	}
	b.WriteString(d.Flush())
	if b.String() != want {
		t.Errorf("%s skip=%v: stream = %q, Decode = %q", label, skip, b.String(), want)
	}
}
