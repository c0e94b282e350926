package adaptercache

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
)

// Adapters that went through the cache compute what the HF reference computes, and exactly
// what LoadPEFT + UploadAdapter give when called directly.
func TestCacheLogitsMatchDirectUpload(t *testing.T) {
	cfg := llamaConfig(t)
	b := cpu.New(0)
	t.Cleanup(b.Close)
	w, err := model.LoadWeights(llamaDir, cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	h, err := fixture.NewHarness(cfg, b, w, 4, 256)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Options{Config: cfg, Backend: b, MaxDeviceSlots: len(fixtureNames),
		Dirs: []string{filepath.Join(fixture.Dir("llama"), "adapters")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cached := map[string]*model.Adapter{}
	direct := map[string]*model.Adapter{}
	for _, n := range fixtureNames {
		l := mustAcquire(t, c, n)
		t.Cleanup(l.Release)
		cached[n] = l.Adapter()
		ha, closer, err := LoadPEFT(fixture.AdapterDir("llama", n), n, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { closer.Close() })
		if direct[n], err = model.UploadAdapter(b, cfg, ha); err != nil {
			t.Fatal(err)
		}
	}

	cases := fixture.Cases(t, "llama")
	for _, chunk := range []int{1 << 20, 3} {
		res, err := h.Run(cases, cached, chunk, fixture.Tolerance{Abs: 1e-3, AllTokens: true})
		if err != nil {
			t.Fatalf("chunk %d: %v", chunk, err)
		}
		t.Logf("chunk %d: %d cases against the reference, worst logit diff %.2e", chunk, len(cases), res.WorstDiff)
	}

	// One prefill per case with each copy of its adapter: the logits must be bit-identical.
	V := cfg.VocabSize
	for i, cs := range cases {
		if cs.Adapter == "" {
			continue
		}
		var got [2][]float32
		for k, set := range []map[string]*model.Adapter{cached, direct} {
			s := prefillStep(cs.Prompt, h.PageSize)
			got[k] = make([]float32, V)
			if err := h.R.Forward(s, []*model.Adapter{set[cs.Adapter]}, got[k]); err != nil {
				t.Fatal(err)
			}
		}
		for j := range V {
			if math.Float32bits(got[0][j]) != math.Float32bits(got[1][j]) {
				t.Fatalf("case %d (%s): logit %d: cache %v, direct %v", i, cs.Adapter, j, got[0][j], got[1][j])
			}
		}
	}
}

// prefillStep is one sequence's whole prompt in one step, in KV pages 0, 1, ...
func prefillStep(prompt []int, pageSize int) *model.Step {
	n := len(prompt)
	s := &model.Step{LogitRows: []int32{int32(n - 1)}}
	var pages []int32
	for p := 0; p*pageSize < n; p++ {
		pages = append(pages, int32(p))
	}
	for i, tok := range prompt {
		s.Tokens = append(s.Tokens, int32(tok))
		s.Positions = append(s.Positions, int32(i))
		s.Slots = append(s.Slots, int32(i))
	}
	s.Seqs = []model.SeqRows{{Start: 0, N: n, Len: n, Pages: pages}}
	return s
}
