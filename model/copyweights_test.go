package model_test

import (
	"math"
	"testing"
	"unsafe"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
)

// Copying a base model out of its file mapping (--no-mmap, model.WeightCopier) changes no
// result: a prefill chunk's and decode steps' logits are bitwise those of the mapped weights,
// for every fixture model (F32, BF16 and F16 checkpoints, tied and untied heads). Every matrix
// then points into the copy, on a cache line, and a tied head shares the embedding's copy.
func TestCopiedWeightsGiveBitwiseTheSameLogits(t *testing.T) {
	for _, name := range fixture.Models {
		t.Run(name, func(t *testing.T) {
			b := cpu.New(2)
			t.Cleanup(b.Close)
			cfg, w := fixture.LoadModel(t, fixture.Dir(name), b)
			r, err := model.NewRunner(cfg, b, w, model.RunnerOptions{MaxTokens: 8, MaxLogitRows: 1, MaxContext: 16,
				KV: model.KVSpec{Pages: 4, PageSize: 4}})
			if err != nil {
				t.Fatal(err)
			}
			before := logitsOf(t, r, cfg)
			mapped := matrixAddrs(w)
			n, err := b.CopyWeights(w)
			if err != nil {
				t.Fatal(err)
			}
			if n <= 0 {
				t.Fatalf("CopyWeights copied %d bytes", n)
			}
			copied := matrixAddrs(w)
			for i, p := range copied {
				if p == mapped[i] || p%64 != 0 {
					t.Fatalf("matrix %d at %#x after the copy (%#x before): not a fresh cache-line-aligned copy", i, p, mapped[i])
				}
			}
			if cfg.TieEmbeddings && copied[0] != copied[1] {
				t.Fatalf("tied head at %#x, embedding at %#x: copied twice", copied[1], copied[0])
			}
			after := logitsOf(t, r, cfg)
			for i := range before {
				if math.Float32bits(before[i]) != math.Float32bits(after[i]) {
					t.Fatalf("logit %d: %g with the copied weights, %g with the mapped ones", i, after[i], before[i])
				}
			}
		})
	}
}

// logitsOf runs a 6-token prompt as one chunk, then three decode steps, and returns every
// step's logits one after the other.
func logitsOf(t *testing.T, r *model.Runner, cfg *model.Config) []float32 {
	t.Helper()
	var all []float32
	pages := []int32{0, 1, 2, 3}
	run := func(from, to int) {
		s := &model.Step{Seqs: []model.SeqRows{{Start: 0, N: to - from, Len: to, Pages: pages}}, LogitRows: []int32{int32(to - from - 1)}}
		for p := from; p < to; p++ {
			s.Tokens = append(s.Tokens, int32((p*7+3)%cfg.VocabSize))
			s.Positions, s.Slots = append(s.Positions, int32(p)), append(s.Slots, int32(p))
		}
		logits := make([]float32, cfg.VocabSize)
		if err := r.Forward(s, []*model.Adapter{nil}, logits); err != nil {
			t.Fatal(err)
		}
		all = append(all, logits...)
	}
	run(0, 6)
	for p := 6; p < 9; p++ {
		run(p, p+1)
	}
	return all
}

// matrixAddrs lists the address of the embedding's, the head's and every layer matrix's first
// element.
func matrixAddrs(w *model.Weights) []uintptr {
	addr := func(t model.Tensor) uintptr {
		switch s := t.Buf.(type) {
		case []uint16:
			return uintptr(unsafe.Pointer(&s[t.Off]))
		case []float32:
			return uintptr(unsafe.Pointer(&s[t.Off]))
		}
		return 0
	}
	out := []uintptr{addr(w.Embed), addr(w.LMHead)}
	for _, l := range w.Layers {
		for _, m := range l.W {
			out = append(out, addr(m))
		}
	}
	return out
}
