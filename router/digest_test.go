package router

import (
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
)

// A bundle's digest is its content's: loading it twice hashes the same, another bundle differs,
// and changing one gate value or a layer's top-k changes it.
func TestBundleDigestIsContent(t *testing.T) {
	cfg, err := model.LoadConfig(fixture.Dir("llama"))
	if err != nil {
		t.Fatal(err)
	}
	load := func(name string) *Bundle {
		t.Helper()
		b, err := Load(filepath.Join(fixture.RoutersRoot(), "llama", name), cfg)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, again, other := load("top2"), load("top2"), load("top1")
	d := a.Digest()
	if d != again.Digest() || d == other.Digest() {
		t.Fatal("digest does not follow content")
	}
	g := again.Gates()[0]
	saved := g.W[len(g.W)/2]
	g.W[len(g.W)/2] += 1e-3
	if again.Digest() == d {
		t.Error("changing a gate value leaves the digest unchanged")
	}
	g.W[len(g.W)/2] = saved
	if again.Digest() != d {
		t.Fatal("restoring the gate does not restore the digest")
	}
	again.layers[0].TopK++
	if again.Digest() == d {
		t.Error("changing top-k leaves the digest unchanged")
	}
}
