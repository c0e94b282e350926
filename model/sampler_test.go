package model_test

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// randomSampleRow draws sampling parameters from the ranges the API allows, with the edges
// (top-k 1 and cand-1, top-p near 0 and 1, U 0 and just below 1, every token banned) often.
func randomSampleRow(r *rand.Rand, vocab int) model.SampleRow {
	row := model.SampleRow{Logprobs: r.IntN(23) - 2, U: float32(r.Float64())}
	row.Logprobs = min(row.Logprobs, model.MaxSampleLogprobs)
	switch r.IntN(8) {
	case 0:
		row.Temperature = 0
	case 1:
		row.Temperature = 1e-5
	default:
		row.Temperature = float32(0.1 + 2*r.Float64())
	}
	switch r.IntN(5) {
	case 1:
		row.TopK = 1 + r.IntN(vocab)
	case 2:
		row.TopK = []int{1, 2, vocab - 1, vocab, vocab + 3}[r.IntN(5)]
	case 3:
		row.TopK = 1 + r.IntN(min(vocab, 50))
	}
	switch r.IntN(4) {
	case 1:
		row.TopP = float32(r.Float64())
	case 2:
		row.TopP = []float32{1e-6, 0.5, 0.9, 0.95, 0.999999, 1}[r.IntN(6)]
	}
	if r.IntN(3) == 0 {
		row.MinP = []float32{0.01, 0.05, 0.3, 0.9, 1}[r.IntN(5)]
	}
	switch r.IntN(6) {
	case 0:
		row.U = 0
	case 1:
		row.U = math.Nextafter32(1, 0)
	}
	if r.IntN(2) == 0 {
		row.RepetitionPenalty = []float32{0, 1, 1.1, 1.5, 3}[r.IntN(5)]
		row.FrequencyPenalty = float32(r.Float64()*4 - 2)
		row.PresencePenalty = float32(r.Float64()*4 - 2)
		seen := map[int32]bool{}
		for n := r.IntN(vocab/2 + 1); n > 0; n-- {
			t := int32(r.IntN(vocab))
			if !seen[t] {
				seen[t] = true
				row.Hist = append(row.Hist, model.TokenCount{Token: t, Count: int32(r.IntN(4))})
			}
		}
	}
	if r.IntN(3) == 0 { // a logit_bias, some of its tokens also banned or in the history
		seen := map[int32]bool{}
		for n := r.IntN(6) + 1; n > 0; n-- {
			t := int32(r.IntN(vocab))
			if !seen[t] {
				seen[t] = true
				row.Bias = append(row.Bias, model.TokenBias{Token: t, Bias: float32(r.Float64()*200 - 100)})
			}
		}
	}
	switch r.IntN(6) {
	case 0:
		for n := r.IntN(8); n > 0; n-- {
			row.Banned = append(row.Banned, int32(r.IntN(vocab+4)-2))
		}
	case 1:
		for t := 0; t < vocab; t++ {
			if t%7 != 3 || r.IntN(2) == 0 {
				row.Banned = append(row.Banned, int32(t))
			}
		}
	}
	return row
}

// randomLogits: normal logits, sometimes coarsely quantised (many ties), sometimes with -inf,
// -0 and +0, or one logit far above the rest.
func randomLogits(r *rand.Rand, vocab int) []float32 {
	l := make([]float32, vocab)
	scale := []float64{0.3, 1, 3, 10}[r.IntN(4)]
	quant := r.IntN(3) == 0
	for i := range l {
		v := r.NormFloat64() * scale
		if quant {
			v = math.Round(v*2) / 2
		}
		l[i] = float32(v)
	}
	if r.IntN(4) == 0 {
		for n := r.IntN(vocab/2 + 1); n > 0; n-- {
			l[r.IntN(vocab)] = float32(math.Inf(-1))
		}
	}
	if r.IntN(4) == 0 {
		l[r.IntN(vocab)] = float32(math.Copysign(0, -1))
		l[r.IntN(vocab)] = 0
	}
	if r.IntN(6) == 0 {
		l[r.IntN(vocab)] = 40
	}
	return l
}

// sameResult compares two results bit for bit.
func sameResult(a, b *model.SampleResult) bool {
	if a.Token != b.Token || math.Float32bits(a.Logprob) != math.Float32bits(b.Logprob) || len(a.Top) != len(b.Top) {
		return false
	}
	for i := range a.Top {
		if a.Top[i].Token != b.Top[i].Token || math.Float32bits(a.Top[i].Logprob) != math.Float32bits(b.Top[i].Logprob) {
			return false
		}
	}
	return true
}

// Sampler is SampleReference: for any logits and parameters it returns the same token, logprob
// and top logprobs, bit for bit, and leaves the logits as the reference does.
func TestSamplerEqualsReference(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 17))
	var s model.Sampler
	draws := 0
	for _, vocab := range []int{1, 2, 7, 64, 320, 4096} {
		n := 3000
		if vocab == 4096 {
			n = 400
		}
		for i := 0; i < n; i++ {
			raw := randomLogits(r, vocab)
			row := randomSampleRow(r, vocab)
			var want, got model.SampleResult
			lw, lg := slices.Clone(raw), slices.Clone(raw)
			rw, rg := row, row
			model.SampleReference(lw, &rw, &want)
			s.Sample(lg, &rg, &got)
			if !sameResult(&want, &got) {
				t.Fatalf("vocab %d draw %d %+v: sampler %+v, reference %+v", vocab, i, row, got, want)
			}
			for j := range lw {
				if math.Float32bits(lw[j]) != math.Float32bits(lg[j]) {
					t.Fatalf("vocab %d draw %d: logit %d left at %v, reference %v", vocab, i, j, lg[j], lw[j])
				}
			}
			draws++
		}
	}
	t.Logf("%d draws equal", draws)
}

// At T=1 and top-p 0.9 (the measurement of issue 13), Sampler and SampleReference pick the same
// token for the same U in every one of 2,000 draws on a 512-token row.
func TestSamplerTopPDrawForDraw(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 9))
	var s model.Sampler
	raw := make([]float32, 512)
	for i := range raw {
		raw[i] = float32(r.NormFloat64() * 2)
	}
	for i := 0; i < 2000; i++ {
		row := model.SampleRow{Temperature: 1, TopP: 0.9, Logprobs: -1, U: float32(r.Float64())}
		var want, got model.SampleResult
		model.SampleReference(slices.Clone(raw), &row, &want)
		s.Sample(slices.Clone(raw), &row, &got)
		if want.Token != got.Token {
			t.Fatalf("draw %d (U %v): sampler %d, reference %d", i, row.U, got.Token, want.Token)
		}
	}
}

// Once its scratch has grown, Sampler allocates nothing per row.
func TestSamplerAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates (and sync.Pool drops entries)")
	}
	r := rand.New(rand.NewPCG(1, 1))
	raw := randomLogits(r, 32000)
	l := make([]float32, len(raw))
	var s model.Sampler
	hist := []model.TokenCount{{Token: 5, Count: 1}, {Token: 9, Count: 0}}
	rows := []model.SampleRow{
		{Logprobs: 5},
		{Temperature: 1, TopP: 0.9, Logprobs: 0, U: 0.3, Hist: hist, RepetitionPenalty: 1.2},
		{Temperature: 0.7, TopK: 50, TopP: 0.95, MinP: 0.05, Logprobs: 20, U: 0.7, Banned: []int32{1, 2}},
	}
	out := model.SampleResult{Top: make([]model.TokenLogprob, 0, model.MaxSampleLogprobs)}
	for i := range rows {
		copy(l, raw)
		s.Sample(l, &rows[i], &out)
	}
	for i := range rows {
		if a := testing.AllocsPerRun(20, func() {
			copy(l, raw)
			s.Sample(l, &rows[i], &out)
		}); a != 0 {
			t.Errorf("row %d: %v allocations per sample", i, a)
		}
	}
}

// BenchmarkSampler: one 128k-vocabulary row (Llama 3's) per op, through Sampler and through
// the reference it replaces on the host.
func BenchmarkSampler(b *testing.B) {
	const vocab = 128256
	r := rand.New(rand.NewPCG(1, 2))
	raw := make([]float32, vocab)
	for i := range raw {
		raw[i] = float32(r.NormFloat64() * 3)
	}
	l := make([]float32, vocab)
	for _, c := range []struct {
		name string
		row  model.SampleRow
	}{
		{"greedy", model.SampleRow{Logprobs: -1}},
		{"T=0.7,top-k=50,top-p=0.9", model.SampleRow{Temperature: 0.7, TopK: 50, TopP: 0.9, Logprobs: -1, U: 0.5}},
		{"T=1,top-p=0.95", model.SampleRow{Temperature: 1, TopP: 0.95, Logprobs: -1, U: 0.5}},
		{"T=1,min-p=0.05,logprobs=5", model.SampleRow{Temperature: 1, MinP: 0.05, Logprobs: 5, U: 0.5}},
	} {
		var s model.Sampler
		var out model.SampleResult
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				copy(l, raw)
				s.Sample(l, &c.row, &out)
			}
		})
		b.Run(c.name+"/reference", func(b *testing.B) {
			for b.Loop() {
				copy(l, raw)
				model.SampleReference(l, &c.row, &out)
			}
		})
	}
}

// SampleExp is e^x to within 3e-7 relative (2.5 float32 ulps) over the range sampling uses, exactly 1 at 0, and 0
// below -86 (and for -inf and NaN); its masses fit the sums the sampler makes.
func TestSampleExp(t *testing.T) {
	if model.SampleExp(0) != 1 || model.SampleMass(1) != 1<<40 {
		t.Fatalf("SampleExp(0) = %v, SampleMass(1) = %d", model.SampleExp(0), model.SampleMass(1))
	}
	for _, x := range []float32{-86.5, -1000, float32(math.Inf(-1)), float32(math.NaN())} {
		if model.SampleExp(x) != 0 {
			t.Errorf("SampleExp(%v) = %v, want 0", x, model.SampleExp(x))
		}
	}
	r := rand.New(rand.NewPCG(2, 3))
	worst := 0.0
	for i := 0; i < 1_000_000; i++ {
		x := float32(-86 * r.Float64())
		if i%2 == 0 {
			x = float32(-r.Float64())
		}
		got, want := float64(model.SampleExp(x)), math.Exp(float64(x))
		worst = max(worst, math.Abs(got-want)/want)
	}
	if worst > 3e-7 {
		t.Fatalf("SampleExp off by %.3g relative", worst)
	}
	t.Logf("worst relative error %.3g", worst)
	if uint64(model.MaxSampleVocab)*model.SampleMass(1) > 1<<63 {
		t.Fatal("a full vocabulary's mass overflows")
	}
}

// A top-p so small that its share of the survivors' mass rounds to nothing still keeps the best
// token (vLLM keeps at least one): SampleReference and Sampler both pick it at every U, never
// an empty set (which left the reference with no token at all).
func TestTinyTopPKeepsTheBestToken(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	var s model.Sampler
	for _, topP := range []float32{1e-30, 1e-15, math.SmallestNonzeroFloat32} {
		for i := 0; i < 200; i++ {
			raw := randomLogits(r, 320)
			best := int32(0)
			for j, v := range raw {
				if v > raw[best] {
					best = int32(j)
				}
			}
			row := model.SampleRow{Temperature: 1, TopP: topP, Logprobs: 0, U: float32(r.Float64())}
			var want, got model.SampleResult
			model.SampleReference(slices.Clone(raw), &row, &want)
			s.Sample(slices.Clone(raw), &row, &got)
			if want.Token != best || !sameResult(&want, &got) {
				t.Fatalf("top-p %g draw %d: reference %+v, sampler %+v, best token %d", topP, i, want, got, best)
			}
		}
	}
}

// A row's bias list is bounded (MaxSampleBias) before any backend runs it: one entry more is
// an error, the bound itself passes.
func TestCheckSampleRowsBoundsBias(t *testing.T) {
	const vocab = 4096
	row := model.SampleRow{Bias: make([]model.TokenBias, model.MaxSampleBias)}
	for i := range row.Bias {
		row.Bias[i] = model.TokenBias{Token: int32(i), Bias: 1}
	}
	if err := model.CheckSampleRows([]model.SampleRow{row}, vocab); err != nil {
		t.Fatalf("%d entries: %v", len(row.Bias), err)
	}
	row.Bias = append(row.Bias, model.TokenBias{Token: 5, Bias: 1})
	if err := model.CheckSampleRows([]model.SampleRow{row}, vocab); err == nil {
		t.Fatalf("%d entries passed", len(row.Bias))
	}
}
