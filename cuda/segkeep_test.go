//go:build cuda

package cuda_test

import (
	"math"
	"testing"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

// A replay that keeps the segment tables on the device (model.SegmentKeeper: the same
// sequences on the same adapters as the step before, no op call) gives the logits the step
// gives unrecorded, to the bit; so does a replay of the same recording for other adapters
// right after it, which must rewrite the tables, and a return to the first adapters.
func TestKeptSegmentReplays(t *testing.T) {
	b := newGPU(t)
	b.SetSegmentKeep(true)
	_, cfg, h := fixture.Open(t, "llama", b)
	ads := fixtureadapters.Upload(t, "llama", cfg, b)
	a, c := ads["a_qv"], ads["b_all_rslora"]
	s := &model.Step{}
	for i := 0; i < 3; i++ {
		s.Seqs = append(s.Seqs, model.SeqRows{Start: i, N: 1, Len: 1, Pages: []int32{int32(i)}})
		s.Tokens = append(s.Tokens, int32(3+7*i))
		s.Positions = append(s.Positions, 0)
		s.Slots = append(s.Slots, int32(i*h.PageSize))
		s.LogitRows = append(s.LogitRows, int32(i))
	}
	forward := func(list []*model.Adapter, graphs bool) []float32 {
		b.SetGraphs(graphs)
		out := make([]float32, len(s.LogitRows)*cfg.VocabSize)
		if err := h.R.Forward(s, list, out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	first, swapped := []*model.Adapter{a, c, nil}, []*model.Adapter{c, a, nil}
	want := map[bool][]float32{false: forward(first, false), true: forward(swapped, false)}
	for i, st := range []struct {
		swapped bool
		kept    bool
	}{{false, false}, {false, true}, {false, true}, {true, false}, {false, false}, {false, true}} {
		list := first
		if st.swapped {
			list = swapped
		}
		kept := b.KeptSegmentReplays()
		got := forward(list, true)
		if k := b.KeptSegmentReplays() > kept; k != st.kept {
			t.Fatalf("step %d: kept the tables %v, want %v", i, k, st.kept)
		}
		for j := range got {
			if math.Float32bits(got[j]) != math.Float32bits(want[st.swapped][j]) {
				t.Fatalf("step %d (adapters swapped %v): logit %d is %v, %v unrecorded", i, st.swapped, j, got[j], want[st.swapped][j])
			}
		}
	}
	if b.GraphCount() == 0 {
		t.Fatal("no recording")
	}
}
