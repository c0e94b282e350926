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
	step := func(rows []int) *model.Step { return rowsStep(rows, h.PageSize) }
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

// rowsStep lays out one sequence a row run: sequence i on page i, rows at positions 0..n-1, a
// logit row for each sequence's last row.
func rowsStep(rows []int, pageSize int) *model.Step {
	s := &model.Step{}
	for i, n := range rows {
		s.Seqs = append(s.Seqs, model.SeqRows{Start: len(s.Tokens), N: n, Len: n, Pages: []int32{int32(i)}})
		for p := 0; p < n; p++ {
			s.Tokens = append(s.Tokens, int32(3+7*i+p))
			s.Positions = append(s.Positions, int32(p))
			s.Slots = append(s.Slots, int32(i*pageSize+p))
		}
		s.LogitRows = append(s.LogitRows, int32(len(s.Tokens)-1))
	}
	return s
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

// keepingBackend is the CPU backend behind the recording contract the CUDA backend keeps
// (model.SegmentKeeper): a step of a key recorded before replays; a replay keeps the segment
// tables when the last step that ended well left this version for this key; a step whose
// EndStep asks for a rerun records nothing and leaves no tables. It counts the forward pass's
// walks (Embed is each walk's first op) and the versions it is given.
type keepingBackend struct {
	model.Backend
	seen          map[string]bool
	key           string
	replay, rerun bool
	version       uint64
	left, prev    keptTables
	walks         int
	versions      []uint64
}

type keptTables struct {
	version uint64
	key     string
}

func (k *keepingBackend) Embed(out, table model.Tensor) { k.walks++; k.Backend.Embed(out, table) }

func (k *keepingBackend) BeginStep(key []byte) bool {
	k.key, k.replay, k.version = string(key), key != nil && k.seen[string(key)], 0
	k.prev, k.left = k.left, keptTables{}
	return k.replay
}

func (k *keepingBackend) StepSegments(version uint64) bool {
	k.versions, k.version = append(k.versions, version), version
	return k.replay && version != 0 && k.prev == keptTables{version, k.key}
}

func (k *keepingBackend) EndStep() error {
	if k.rerun {
		k.rerun = false
		return model.ErrRerun
	}
	if k.key != "" {
		k.seen[k.key] = true
	}
	if k.version != 0 {
		k.left = keptTables{k.version, k.key}
	}
	return nil
}

var _ model.SegmentKeeper = (*keepingBackend)(nil)

// A replayed step skips the forward pass's walk exactly when its segment lists are the ones the
// last keyed step left for the same recording: consecutive steps of the same sequences on the
// same adapters and rows. Swapped adapters, more rows, a return to an earlier layout, another
// runner or a rebuild after a panicked one get a version never given before, and walk; so does
// the step after one whose recording failed (rerun unrecorded). A token outside the vocabulary
// is refused before any op, kept step or not.
func TestReplayKeepsTheSegmentsOfTheLastStep(t *testing.T) {
	const name = "llama"
	kb := &keepingBackend{Backend: cpu.New(1), seen: map[string]bool{}}
	t.Cleanup(kb.Backend.(*cpu.Backend).Close)
	_, cfg, h := fixture.Open(t, name, kb)
	ads := fixtureadapters.Upload(t, name, cfg, kb)
	a, b := ads["a_qv"], ads["b_all_rslora"]
	short := *b // every projection of every layer, one layer short: its rebuild panics
	short.Modules = short.Modules[:len(short.Modules)-1]
	step := func(rows []int) *model.Step { return rowsStep(rows, h.PageSize) }
	other, err := model.NewRunner(cfg, kb, h.R.W, h.R.Opt)
	if err != nil {
		t.Fatal(err)
	}
	first := []*model.Adapter{a, b, nil}
	steps := []struct {
		r      *model.Runner
		rows   []int
		ads    []*model.Adapter
		rerun  bool // EndStep asks for a rerun once
		walks  int  // the forward pass's walks
		same   int  // the step whose version this one has, or -1 for a new one
		panics bool
	}{
		{h.R, []int{1, 1, 1}, first, false, 1, -1, false},                           // 0 recorded
		{h.R, []int{1, 1, 1}, first, false, 0, 0, false},                            // 1 replayed, kept
		{h.R, []int{1, 1, 1}, first, false, 0, 0, false},                            // 2 again
		{h.R, []int{1, 1, 1}, []*model.Adapter{b, a, nil}, false, 1, -1, false},     // 3 adapters swapped
		{h.R, []int{1, 1, 1}, first, false, 1, -1, false},                           // 4 back to the first layout: a replay, tables rewritten
		{h.R, []int{1, 1, 1}, first, false, 0, 4, false},                            // 5 kept again
		{h.R, []int{2, 1, 1}, first, true, 2, -1, false},                            // 6 more rows, its recording fails: walked twice
		{h.R, []int{2, 1, 1}, first, false, 1, 6, false},                            // 7 the same version, but nothing was left: walks
		{h.R, []int{2, 1, 1}, first, false, 0, 6, false},                            // 8 kept
		{other, []int{2, 1, 1}, first, false, 1, -1, false},                         // 9 another runner, same step
		{h.R, []int{2, 1, 1}, []*model.Adapter{a, &short, nil}, false, 0, -1, true}, // 10 a rebuild that panics
		{h.R, []int{2, 1, 1}, first, false, 1, -1, false},                           // 11 the layout before it: rebuilt
		{h.R, []int{2, 1, 1}, first, false, 0, 11, false},                           // 12 kept
		{h.R, []int{1, 1, 1}, []*model.Adapter{nil, nil, nil}, false, 1, -1, false},
		{h.R, []int{1, 1, 1}, []*model.Adapter{nil, nil, nil}, false, 0, 13, false}, // 14 no adapters: kept too
	}
	seen, stepVersion := map[uint64]bool{}, map[int]uint64{}
	for i, st := range steps {
		walks, given := kb.walks, len(kb.versions)
		s := step(st.rows)
		kb.rerun = st.rerun
		err := func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("panic: %v", p)
				}
			}()
			return st.r.Forward(s, st.ads, make([]float32, len(s.LogitRows)*cfg.VocabSize))
		}()
		if (err != nil) != st.panics {
			t.Fatalf("step %d: %v", i, err)
		}
		if w := kb.walks - walks; w != st.walks {
			t.Errorf("step %d: %d walks, want %d", i, w, st.walks)
		}
		if st.panics {
			continue // the rebuild panics before the step key, so before any version is given
		}
		if len(kb.versions) != given+1 || kb.versions[given] == 0 {
			t.Fatalf("step %d: versions %v, %d before it", i, kb.versions, given)
		}
		v := kb.versions[given]
		switch {
		case st.same >= 0 && v != stepVersion[st.same]:
			t.Errorf("step %d: version %d, want step %d's %d", i, v, st.same, stepVersion[st.same])
		case st.same < 0 && seen[v]:
			t.Errorf("step %d: version %d was given before (%v)", i, v, kb.versions)
		}
		seen[v], stepVersion[i] = true, v
	}
	// A token outside the vocabulary, in the step that was just kept: refused, nothing run.
	s, walks := step([]int{1, 1, 1}), kb.walks
	s.Tokens[1] = int32(cfg.VocabSize)
	if err := h.R.Forward(s, []*model.Adapter{nil, nil, nil}, make([]float32, 3*cfg.VocabSize)); err == nil || kb.walks != walks {
		t.Fatalf("token %d: error %v, %d walks", cfg.VocabSize, err, kb.walks-walks)
	}
}

// mergingBackend is the CPU backend with segment merging switched (model.SegmentMerger) and
// every LoRA call's segments counted.
type mergingBackend struct {
	*cpu.Backend
	merge bool
	segs  int
}

func (m *mergingBackend) MergesSegments() bool { return m.merge }

func (m *mergingBackend) LoRA(out, x model.Tensor, segs []model.LoRASeg) {
	m.segs += len(segs)
	m.Backend.LoRA(out, x, segs)
}

// Adjacent sequences on one adapter whose rows follow each other share one LoRA segment where
// the backend merges (model.SegmentMerger): a run ends at another adapter or a base row, and a
// run of prefill rows merges like decode rows. In deterministic mode every row's logits are the
// ones it gets with a segment a sequence, to the bit, including after the switch flips
// between steps of the same layout.
func TestMergedSegmentsGiveTheRowsTheirOwnLogits(t *testing.T) {
	const name = "llama"
	mb := &mergingBackend{Backend: cpu.New(1)}
	t.Cleanup(mb.Close)
	_, cfg, h := fixture.Open(t, name, mb)
	if err := h.R.SetBatchInvariant(true); err != nil {
		t.Fatal(err)
	}
	ads := fixtureadapters.Upload(t, name, cfg, mb)
	a, b := ads["a_qv"], ads["b_all_rslora"]
	// adapted is how many projections of all layers ad adapts: its segments a run.
	adapted := func(ad *model.Adapter) (n int) {
		for l := range ad.Modules {
			for _, m := range ad.Modules[l] {
				if m != nil {
					n++
				}
			}
		}
		return n
	}
	for _, c := range []struct {
		rows   []int
		ads    []*model.Adapter
		merged int // segments a merged step puts
	}{
		{[]int{1, 1, 1, 1, 1}, []*model.Adapter{a, a, b, a, a}, 2*adapted(a) + adapted(b)},
		{[]int{1, 1, 1}, []*model.Adapter{a, nil, a}, 2 * adapted(a)},
		{[]int{1, 1, 1}, []*model.Adapter{b, a, b}, 2*adapted(b) + adapted(a)},
		{[]int{3, 2, 1}, []*model.Adapter{b, b, b}, adapted(b)},
	} {
		// Unmerged, merged, and unmerged again after a merged step of the same layout.
		var logits [3][]float32
		var segs [3]int
		for i, merge := range []bool{false, true, false} {
			mb.merge, mb.segs = merge, 0
			s := rowsStep(c.rows, h.PageSize)
			logits[i] = make([]float32, len(s.LogitRows)*cfg.VocabSize)
			if err := h.R.Forward(s, c.ads, logits[i]); err != nil {
				t.Fatal(err)
			}
			segs[i] = mb.segs
		}
		unmerged := 0
		for _, ad := range c.ads {
			if ad != nil {
				unmerged += adapted(ad)
			}
		}
		if segs != [3]int{unmerged, c.merged, unmerged} {
			t.Errorf("rows %v: %v segments unmerged, merged, unmerged; want %d, %d, %d", c.rows, segs, unmerged, c.merged, unmerged)
		}
		for i := 1; i < 3; i++ {
			for j := range logits[0] {
				if math.Float32bits(logits[0][j]) != math.Float32bits(logits[i][j]) {
					t.Fatalf("rows %v, step %d: logit %d is %v, %v in the first", c.rows, i, j, logits[i][j], logits[0][j])
				}
			}
		}
	}
}
