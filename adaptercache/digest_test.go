package adaptercache

import (
	"testing"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
)

// An adapter's digest is its content's: the same files under another name or path hash the
// same, and changing one byte of one tensor, a scale or a rank changes it; different adapters
// differ.
func TestDigestIsContentNotName(t *testing.T) {
	cfg, err := model.LoadConfig(fixture.Dir("llama"))
	if err != nil {
		t.Fatal(err)
	}
	load := func(adapter, name string) *model.HostAdapter {
		t.Helper()
		ha, c, err := LoadPEFT(fixture.AdapterDir("llama", adapter), name, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return ha
	}
	a, again, b := load("a_qv", "x"), load("a_qv", "y"), load("b_all_rslora", "x")
	d := Digest(a)
	if d != Digest(again) {
		t.Fatal("the same adapter under two names hashes differently")
	}
	if d == Digest(b) || d == ([32]byte{}) {
		t.Fatal("two different adapters hash the same")
	}
	var m *model.HostLoRA
	for l := range again.Modules {
		for _, x := range again.Modules[l] {
			if x != nil && m == nil {
				m = x
			}
		}
	}
	for what, change := range map[string]func(){
		"a byte of B": func() {
			data := append([]byte(nil), m.B.Data...) // the file is mapped read-only
			data[len(data)/2] ^= 1
			m.B.Data = data
		},
		"the scale": func() { m.Scale *= 2 },
		"the rank":  func() { m.Rank++ },
	} {
		saved := *m
		change()
		if Digest(again) == d {
			t.Errorf("changing %s leaves the digest unchanged", what)
		}
		*m = saved
	}
	if Digest(again) != d {
		t.Fatal("restoring the adapter does not restore its digest")
	}
}
