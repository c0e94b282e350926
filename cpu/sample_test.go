package cpu

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// The CPU backend samples model.SampleReference: with the same logits and U, every row of a
// batch picks the reference's token with the reference's logprobs, bit for bit, over 2,000
// draws of each parameter set (issue 13 measured 69 of 2,000 equal before).
func TestSampleEqualsReference(t *testing.T) {
	b := New(2)
	defer b.Close()
	const vocab, batch, draws = 512, 8, 2000
	r := rand.New(rand.NewPCG(21, 22))
	hist := []model.TokenCount{{Token: 3, Count: 0}, {Token: 40, Count: 2}, {Token: 41, Count: 1}}
	for _, p := range []model.SampleRow{
		{Temperature: 1, TopP: 0.9},
		{Temperature: 1, TopK: 40},
		{Temperature: 0.8, MinP: 0.05, Logprobs: 3},
		{Temperature: 1.2, TopK: 100, TopP: 0.95, MinP: 0.01, RepetitionPenalty: 1.3, FrequencyPenalty: 0.5,
			PresencePenalty: 0.2, Hist: hist, Banned: []int32{1, 2}, Logprobs: 0},
		{Logprobs: 5, Banned: []int32{7}},
	} {
		lt := b.Alloc(batch, vocab)
		rows := make([]model.SampleRow, batch)
		out := make([]model.SampleResult, batch)
		for d := 0; d < draws; d += batch {
			flat := make([]float32, batch*vocab)
			for i := range flat {
				flat[i] = float32(r.NormFloat64() * 2)
			}
			if err := b.Write(lt, flat); err != nil {
				t.Fatal(err)
			}
			for i := range rows {
				rows[i] = p
				if p.Temperature > 0 {
					rows[i].U = float32(r.Float64())
				}
			}
			if err := b.Sample(lt, rows, out); err != nil {
				t.Fatal(err)
			}
			for i := range rows {
				var want model.SampleResult
				model.SampleReference(slices.Clone(flat[i*vocab:(i+1)*vocab]), &rows[i], &want)
				got := out[i]
				if got.Token != want.Token || math.Float32bits(got.Logprob) != math.Float32bits(want.Logprob) || !slices.Equal(got.Top, want.Top) {
					t.Fatalf("%+v draw %d: cpu %+v, reference %+v", p, d+i, got, want)
				}
			}
		}
	}
	// Shapes and rows are checked before anything is read.
	lt := b.Alloc(2, 10)
	if err := b.Sample(lt, make([]model.SampleRow, 1), make([]model.SampleResult, 1)); err == nil {
		t.Error("Sample accepted 1 row for a 2-row tensor")
	}
	if err := b.Sample(lt, []model.SampleRow{{Logprobs: 21}, {}}, make([]model.SampleResult, 2)); err == nil {
		t.Error("Sample accepted 21 logprobs")
	}
	if err := b.Sample(lt, []model.SampleRow{{Hist: []model.TokenCount{{Token: 10}}}, {}}, make([]model.SampleResult, 2)); err == nil {
		t.Error("Sample accepted a history token outside the vocabulary")
	}
}

// A warm CPU sampler allocates nothing per step.
func TestSampleAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates (and sync.Pool drops entries)")
	}
	b := New(1)
	defer b.Close()
	const vocab = 4096
	r := rand.New(rand.NewPCG(1, 2))
	flat := make([]float32, 4*vocab)
	for i := range flat {
		flat[i] = float32(r.NormFloat64() * 2)
	}
	lt := b.Alloc(4, vocab)
	rows := []model.SampleRow{{Logprobs: 2}, {Temperature: 1, TopP: 0.9, U: 0.4, Logprobs: -1},
		{Temperature: 0.7, TopK: 50, U: 0.9, Logprobs: 0}, {Temperature: 1, MinP: 0.1, U: 0.1, Logprobs: 20}}
	out := make([]model.SampleResult, 4)
	run := func() {
		if err := b.Write(lt, flat); err != nil {
			t.Fatal(err)
		}
		if err := b.Sample(lt, rows, out); err != nil {
			t.Fatal(err)
		}
	}
	run()
	if a := testing.AllocsPerRun(50, run); a > 0 {
		t.Fatalf("%v allocations per Sample", a)
	}
}
