package model_test

import (
	"fmt"
	"math"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

// A runner reuses a step's LoRA segments only for a step of the same sequences on the same
// adapters and rows: swapping two sequences' adapters, giving a sequence more rows, dropping
// an adapter or going back to an earlier layout gives every step the logits a fresh runner
// gives it alone, to the bit.
func TestStepSegmentsFollowTheirSequences(t *testing.T) {
	const name = "llama"
	open := func() (*fixture.Harness, map[string]*model.Adapter, int) {
		b := cpu.New(1)
		t.Cleanup(b.Close)
		_, cfg, h := fixture.Open(t, name, b)
		return h, fixtureadapters.Upload(t, name, cfg, b), cfg.VocabSize
	}
	h, ads, vocab := open()
	// step lays out one sequence a row run: sequence i on page i, rows at positions 0..n-1, a
	// logit row for each sequence's last row.
	step := func(rows []int) *model.Step {
		s := &model.Step{}
		for i, n := range rows {
			s.Seqs = append(s.Seqs, model.SeqRows{Start: len(s.Tokens), N: n, Len: n, Pages: []int32{int32(i)}})
			for p := 0; p < n; p++ {
				s.Tokens = append(s.Tokens, int32(3+7*i+p))
				s.Positions = append(s.Positions, int32(p))
				s.Slots = append(s.Slots, int32(i*h.PageSize+p))
			}
			s.LogitRows = append(s.LogitRows, int32(len(s.Tokens)-1))
		}
		return s
	}
	a, b, c := ads["a_qv"], ads["b_all_rslora"], ads["c_patterns"]
	steps := []struct {
		rows []int
		ads  []*model.Adapter
	}{
		{[]int{1, 1, 1}, []*model.Adapter{a, b, nil}},
		{[]int{1, 1, 1}, []*model.Adapter{a, b, nil}}, // the same: reused
		{[]int{1, 1, 1}, []*model.Adapter{b, a, nil}}, // adapters swapped
		{[]int{2, 1, 1}, []*model.Adapter{b, a, nil}}, // more rows for the first
		{[]int{2, 1, 1}, []*model.Adapter{b, nil, c}}, // one dropped, one added
		{[]int{1, 1, 1}, []*model.Adapter{a, b, nil}}, // back to the first layout
		{[]int{1, 1, 1}, []*model.Adapter{a, b, c}},
		{[]int{1, 1, 2}, []*model.Adapter{a, b, c}}, // only the last adapted sequence's rows change
	}
	for k, st := range steps {
		s := step(st.rows)
		got := make([]float32, len(s.LogitRows)*vocab)
		if err := h.R.Forward(s, st.ads, got); err != nil {
			t.Fatal(err)
		}
		fresh, fads, _ := open()
		var remap []*model.Adapter
		for _, ad := range st.ads {
			var f *model.Adapter
			if ad != nil {
				f = fads[ad.Name]
			}
			remap = append(remap, f)
		}
		want := make([]float32, len(got))
		if err := fresh.R.Forward(step(st.rows), remap, want); err != nil {
			t.Fatal(err)
		}
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("%s", fmt.Sprintf("step %d (rows %v): logit %d is %v after the earlier steps, %v alone", k, st.rows, i, got[i], want[i]))
			}
		}
	}
}

// A rebuild that panics (here an adapter one layer short; the engine recovers from a step's
// panic and goes on with the same runner) leaves no half-built segments behind: the step before
// it, run again, gives the same logits to the bit.
func TestStepSegmentsAfterAPanickedRebuild(t *testing.T) {
	const name = "llama"
	b := cpu.New(1)
	t.Cleanup(b.Close)
	_, cfg, h := fixture.Open(t, name, b)
	ads := fixtureadapters.Upload(t, name, cfg, b)
	s := &model.Step{Tokens: []int32{3, 4}, Positions: []int32{0, 0}, Slots: []int32{0, int32(h.PageSize)},
		Seqs:      []model.SeqRows{{Start: 0, N: 1, Len: 1, Pages: []int32{0}}, {Start: 1, N: 1, Len: 1, Pages: []int32{1}}},
		LogitRows: []int32{0, 1}}
	run := func(list []*model.Adapter) []float32 {
		out := make([]float32, 2*cfg.VocabSize)
		if err := h.R.Forward(s, list, out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	first := run([]*model.Adapter{ads["a_qv"], nil})
	short := *ads["b_all_rslora"] // every projection of every layer: its rows' segments are in each layer built before the panic
	short.Modules = short.Modules[:len(short.Modules)-1]
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("a step on an adapter one layer short did not panic")
			}
		}()
		run([]*model.Adapter{ads["a_qv"], &short})
	}()
	again := run([]*model.Adapter{ads["a_qv"], nil})
	for i := range first {
		if math.Float32bits(first[i]) != math.Float32bits(again[i]) {
			t.Fatalf("logit %d is %v after the panicked step, %v before it", i, again[i], first[i])
		}
	}
}
