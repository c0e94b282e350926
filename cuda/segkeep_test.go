//go:build cuda

package cuda_test

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

// A replay that keeps the segment tables on the device (model.SegmentKeeper: the same sequences
// on the same adapters as the step before, no op call) gives each decode step the logits the
// same steps give unrecorded, to the bit; so do the replays that must rewrite the tables: the
// same recording for other adapters, a return to the first ones, the step after an unrecorded
// step and the first after the recordings were dropped.
func TestKeptSegmentReplays(t *testing.T) {
	b := newGPU(t)
	b.SetSegmentKeep(true)
	_, cfg, h := fixture.Open(t, "llama", b)
	ads := fixtureadapters.Upload(t, "llama", cfg, b)
	a, c := ads["a_qv"], ads["b_all_rslora"]
	first, swapped := []*model.Adapter{a, c, nil}, []*model.Adapter{c, a, nil}
	const steps = 11
	per := (steps + h.PageSize - 1) / h.PageSize
	step := func(k int, base int) *model.Step { return decodeRows(k, base, 3, per, h.PageSize) }
	schedule := []struct {
		ads          []*model.Adapter
		direct, drop bool // this step unrecorded; every recording dropped before it
		kept         bool
	}{
		{first, false, false, false},   // recorded
		{first, false, false, true},    // replayed, tables kept
		{first, false, false, true},    //
		{swapped, false, false, false}, // the same recording, other tables
		{first, false, false, false},   // back to the first adapters: rewritten
		{first, false, false, true},    //
		{first, true, false, false},    // unrecorded
		{first, false, false, false},   // after it: the tables are not known
		{first, false, false, true},    //
		{first, false, true, false},    // recordings dropped: recorded again
		{first, false, false, true},    //
	}
	if len(schedule) != steps {
		t.Fatalf("%d steps scheduled, pages for %d", len(schedule), steps)
	}
	forward := func(s *model.Step, list []*model.Adapter) []float32 {
		out := make([]float32, len(s.LogitRows)*cfg.VocabSize)
		if err := h.R.Forward(s, list, out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	b.SetGraphs(false)
	want := make([][]float32, len(schedule))
	for k, e := range schedule {
		want[k] = forward(step(k, 3*per), e.ads)
	}
	for k, e := range schedule {
		if e.drop {
			b.SetLoRAWide(false) // a switch drops every recording when it changes
			b.SetLoRAWide(true)
		}
		b.SetGraphs(!e.direct)
		kept, graphs := b.KeptSegmentReplays(), b.GraphCount()
		got := forward(step(k, 0), e.ads)
		if kk := b.KeptSegmentReplays() > kept; kk != e.kept {
			t.Fatalf("step %d: kept the tables %v, want %v", k, kk, e.kept)
		}
		if e.drop && (graphs != 0 || b.GraphCount() != 1) {
			t.Fatalf("step %d: %d recordings before, %d after, want 0 and 1", k, graphs, b.GraphCount())
		}
		for j := range got {
			if math.Float32bits(got[j]) != math.Float32bits(want[k][j]) {
				t.Fatalf("step %d: logit %d is %v, %v unrecorded", k, j, got[j], want[k][j])
			}
		}
	}
	b.SetGraphs(true)
}

// With replays keeping their segment tables, the engine-core fixture suite still matches the
// transformers/peft reference within the bf16 bound and gives the results it gives without
// (every family, base + four adapters in one mixed batch, prefill whole and chunked, decode
// replayed from CUDA graphs), and its decode steps do keep tables.
func TestSegmentKeepFixturesCUDA(t *testing.T) {
	b := newGPU(t)
	fixturesAlike(t, b, "kept segment tables", b.SetSegmentKeep)
	if b.KeptSegmentReplays() == 0 {
		t.Fatal("no replay kept its segment tables")
	}
}

// decodeRows is step k of a decode of n sequences: sequence i on pages base+i*per.. (per pages of
// pageSize positions each), its token at position k, every row's logits read.
func decodeRows(k, base, n, per, pageSize int) *model.Step {
	s := &model.Step{}
	for i := 0; i < n; i++ {
		pages := make([]int32, per)
		for j := range pages {
			pages[j] = int32(base + i*per + j)
		}
		s.Seqs = append(s.Seqs, model.SeqRows{Start: i, N: 1, Len: k + 1, Pages: pages})
		s.Tokens = append(s.Tokens, int32(3+7*i+5*k))
		s.Positions = append(s.Positions, int32(k))
		s.Slots = append(s.Slots, pages[k/pageSize]*int32(pageSize)+int32(k%pageSize))
		s.LogitRows = append(s.LogitRows, int32(i))
	}
	return s
}

// Adjacent sequences on one adapter in one LoRA segment (model.SegmentMerger) give every row the
// logits it gets in segments of its own: to the bit in deterministic mode, within the bf16 bound
// in the default one, in recorded and replayed decode steps; a merged step writes fewer segments
// (runs a,a | c | a,a where the sequences made 5; the CPU rule test counts them exactly).
func TestMergedSegmentsCUDA(t *testing.T) {
	b := newGPU(t)
	_, cfg, h := fixture.Open(t, "llama", b)
	ads := fixtureadapters.Upload(t, "llama", cfg, b)
	a, c := ads["b_all_rslora"], ads["a_qv"]
	list := []*model.Adapter{a, a, c, a, a}
	const steps, seqs = 6, 5
	per := (steps + h.PageSize - 1) / h.PageSize
	for _, deterministic := range []bool{false, true} {
		b.SetBatchInvariant(deterministic)
		var logits [2][][]float32
		var put [2]int
		for i, merge := range []bool{false, true} {
			b.SetSegmentMerge(merge)
			for k := range steps {
				before := b.SegmentsPut()
				out := make([]float32, seqs*cfg.VocabSize)
				if err := h.R.Forward(decodeRows(k, 0, seqs, per, h.PageSize), list, out); err != nil {
					t.Fatal(err)
				}
				logits[i] = append(logits[i], out)
				put[i] = b.SegmentsPut() - before // the last step's: a replay, which walks once
			}
		}
		if put[1] == 0 || put[1] >= put[0] {
			t.Errorf("deterministic %v: the last step put %d segments merged, %d not", deterministic, put[1], put[0])
		}
		for k := range steps {
			d, scale := maxDiff(logits[0][k], logits[1][k])
			if deterministic && d != 0 || d > 0.02+0.01*scale {
				t.Errorf("deterministic %v, step %d: merged logits differ by %g (largest %g)", deterministic, k, d, scale)
			}
			if k == steps-1 {
				t.Logf("deterministic %v: largest difference merged vs not %g; the last step put %d segments merged, %d not", deterministic, d, put[1], put[0])
			}
		}
	}
	b.SetBatchInvariant(false)
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}

// Routed decode steps keep their plain sequences' segment tables too (model.SegmentKeeper; the
// routed rows' segments the recording's routing kernels write anew in every replay): a batch of
// plain, base and device-routed sequences decodes with keeping to the bit as without it (logits
// and route traces), its replays keep, and when two plain sequences swap adapters mid-decode (the
// same step key, so the same recording, with other tables) that step walks and copies its new
// tables before the next ones keep them. The same with the routing shrink by rows
// (LORAPLEX_ROUTED_ROWS) taking every routed call.
func TestKeptRoutedReplaysCUDA(t *testing.T) {
	b := newGPU(t)
	for _, rows := range []bool{false, true} {
		t.Run(fmt.Sprintf("rows %v", rows), func(t *testing.T) {
			b.SetRoutedRows(rows, 0)
			defer b.SetRoutedRows(false, -1)
			took := b.RoutedRowsCount()
			keptRoutedReplays(t, b)
			if rows && b.RoutedRowsCount() == took {
				t.Fatal("no routed call took the routing shrink by rows")
			}
		})
	}
}

func keptRoutedReplays(t *testing.T, b *cuda.Backend) {
	const steps, swapAt = 12, 5
	rb := newRoutedBatch(t, b, "llama")
	x, y := fixture.Adapters[0], fixture.Adapters[1]
	swap := func() { rb.adapters[x], rb.adapters[y] = rb.adapters[y], rb.adapters[x] }
	var logits [2][][]float32
	var traces [2][][]int32
	var kept [2]int
	for i, keep := range []bool{false, true} {
		b.SetSegmentKeep(keep)
		before := b.KeptSegmentReplays()
		logits[i], traces[i] = rb.decode(t, b, steps, swapAt, swap)
		kept[i] = b.KeptSegmentReplays() - before
		swap() // back, for the next run and the cleanups
	}
	b.SetSegmentKeep(false)
	// Without keeping none; with it every decode step but the first (recorded) and the swapped
	// one at most, and some.
	if kept[0] != 0 || kept[1] == 0 || kept[1] > steps-2 {
		t.Fatalf("%d and %d kept replays over %d decode steps without and with keeping", kept[0], kept[1], steps)
	}
	for step := range logits[0] {
		if !slices.Equal(traces[0][step], traces[1][step]) {
			t.Fatalf("decode step %d: route traces differ with kept tables", step)
		}
		for j := range logits[0][step] {
			if math.Float32bits(logits[0][step][j]) != math.Float32bits(logits[1][step][j]) {
				t.Fatalf("decode step %d: logit %d is %v with kept tables, %v without", step, j, logits[1][step][j], logits[0][step][j])
			}
		}
	}
	t.Logf("%d of %d decode steps kept their tables", kept[1], steps)
}

// With merged segments the engine-core fixture suite matches the transformers/peft
// reference within the bf16 bound, as without (every family, base + four adapters in one mixed
// batch, prefill whole and chunked, decode replayed from CUDA graphs).
func TestSegmentMergeFixturesCUDA(t *testing.T) {
	b := newGPU(t)
	for _, merge := range []bool{false, true} {
		b.SetSegmentMerge(merge)
		eachFixture(t, b, func(t *testing.T, c fixtureCase) {
			runChunkings(t, c.h, c.fx.Cases, c.adapters, fmt.Sprintf("%s merge %v", c.name, merge))
		})
	}
}
