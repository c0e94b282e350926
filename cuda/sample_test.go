//go:build cuda

package cuda_test

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
)

// sampleCase is one row's logits and parameters.
type sampleCase struct {
	name   string
	logits []float32
	row    model.SampleRow
}

// testLogits: normal logits scaled by s; quantised to 1/8 when ties are wanted.
func testLogits(r *rand.Rand, vocab int, s float64, ties bool) []float32 {
	l := make([]float32, vocab)
	for i := range l {
		v := r.NormFloat64() * s
		if ties {
			v = math.Round(v*8) / 8
		}
		l[i] = float32(v)
	}
	return l
}

func histFor(r *rand.Rand, vocab, n int) []model.TokenCount {
	seen := map[int32]bool{}
	var h []model.TokenCount
	for len(h) < n {
		t := int32(r.IntN(vocab))
		if seen[t] {
			continue
		}
		seen[t] = true
		h = append(h, model.TokenCount{Token: t, Count: int32(r.IntN(4))})
	}
	return h
}

func sampleCases(r *rand.Rand, vocab int) []sampleCase {
	greedy := model.SampleRow{Logprobs: -1}
	var cs []sampleCase
	add := func(name string, l []float32, row model.SampleRow) {
		cs = append(cs, sampleCase{name, l, row})
	}
	add("greedy", testLogits(r, vocab, 3, false), greedy)
	add("greedy ties logprobs", testLogits(r, vocab, 1, true), model.SampleRow{Logprobs: 20})
	top := testLogits(r, vocab, 3, false)
	best := int32(argmax(top))
	add("greedy banned best + penalties + logprobs", top, model.SampleRow{Logprobs: 5, RepetitionPenalty: 1.3, FrequencyPenalty: 0.5, PresencePenalty: 0.25,
		Hist: append(histFor(r, vocab, 40), model.TokenCount{Token: (best + 1) % int32(vocab), Count: 2}), Banned: []int32{best, -1, int32(vocab) + 5}})
	for i := 0; i < 6; i++ {
		u := float32(r.Float64())
		add("temperature only", testLogits(r, vocab, 2, false), model.SampleRow{Temperature: 0.8, Logprobs: 0, U: u})
		add("top-k 50", testLogits(r, vocab, 2, false), model.SampleRow{Temperature: 1, TopK: 50, Logprobs: -1, U: u})
		add("top-k 1 ties", testLogits(r, vocab, 1, true), model.SampleRow{Temperature: 1, TopK: 1, Logprobs: -1, U: u})
		add("top-k 7 ties", testLogits(r, vocab, 1, true), model.SampleRow{Temperature: 0.5, TopK: 7, Logprobs: 3, U: u})
		add("top-p 0.9", testLogits(r, vocab, 2, false), model.SampleRow{Temperature: 1, TopP: 0.9, Logprobs: -1, U: u})
		add("top-p 0.01", testLogits(r, vocab, 2, false), model.SampleRow{Temperature: 1, TopP: 0.01, Logprobs: -1, U: u})
		add("top-p ties", testLogits(r, vocab, 1, true), model.SampleRow{Temperature: 1.2, TopP: 0.5, Logprobs: -1, U: u})
		add("min-p 0.05", testLogits(r, vocab, 2, false), model.SampleRow{Temperature: 1.5, MinP: 0.05, Logprobs: -1, U: u})
		add("everything", testLogits(r, vocab, 2, false), model.SampleRow{Temperature: 0.7, TopK: 40, TopP: 0.8, MinP: 0.02,
			RepetitionPenalty: 1.2, FrequencyPenalty: 0.4, PresencePenalty: 0.3, Hist: histFor(r, vocab, 100),
			Banned: []int32{0, 1, 2}, Logprobs: 20, U: u})
		add("top-k 1024 top-p 0.95 (compacted)", testLogits(r, vocab, 1, true), model.SampleRow{Temperature: 1, TopK: 1024, TopP: 0.95, Logprobs: -1, U: u})
		add("top-k 300 min-p ties", testLogits(r, vocab, 1, true), model.SampleRow{Temperature: 0.9, TopK: 300, MinP: 0.2, Logprobs: -1, U: u})
		add("top-k 2000 top-p 0.5 (not compacted)", testLogits(r, vocab, 1, true), model.SampleRow{Temperature: 1, TopK: 2000, TopP: 0.5, Logprobs: -1, U: u})
		l := testLogits(r, vocab, 2, false)
		var banned []int32
		for t := 3; t < vocab; t++ {
			banned = append(banned, int32(t))
		}
		add("all but three banned", l, model.SampleRow{Temperature: 1, Banned: banned, Logprobs: 0, U: u})
	}
	everything := model.SampleRow{Temperature: 1, Banned: make([]int32, vocab), Logprobs: 2, U: 0.5}
	for t := range everything.Banned {
		everything.Banned[t] = int32(t)
	}
	add("all banned", testLogits(r, vocab, 2, false), everything)
	add("u near 1", testLogits(r, vocab, 2, false), model.SampleRow{Temperature: 1, TopK: 10, U: math.Nextafter32(1, 0), Logprobs: -1})
	add("u 0", testLogits(r, vocab, 2, false), model.SampleRow{Temperature: 1, TopP: 0.5, U: 0, Logprobs: -1})
	add("top-p 1e-30 (keeps the best token)", testLogits(r, vocab, 2, false), model.SampleRow{Temperature: 1, TopP: 1e-30, U: 0.7, Logprobs: 0})
	// Constrained rows and logit_bias: the mask leaves the raw logprobs alone, a biased
	// token's logprob is its raw one.
	add("mask allows nothing", testLogits(r, vocab, 2, false), model.SampleRow{Temperature: 1, Allowed: onlyMask(vocab), Logprobs: 2, U: 0.5})
	add("greedy mask of two tokens", testLogits(r, vocab, 2, false), model.SampleRow{Allowed: onlyMask(vocab, 7, vocab-1), Logprobs: 20})
	l := testLogits(r, vocab, 2, false)
	add("mask, bias, bans and penalties", l, model.SampleRow{Temperature: 0.9, TopK: 30, TopP: 0.9, RepetitionPenalty: 1.3,
		FrequencyPenalty: 0.2, Hist: histFor(r, vocab, 30), Banned: []int32{int32(argmax(l))}, Bias: randomBias(r, vocab, 40),
		Allowed: randomMask(r, vocab, 0.2), Logprobs: 4, U: 0.4})
	l = testLogits(r, vocab, 2, false)
	add("greedy bias forces a masked-out token (stays out)", l, model.SampleRow{Allowed: allButMask(vocab, 3),
		Bias: []model.TokenBias{{Token: 3, Bias: 100}, {Token: 3, Bias: 100}}, Logprobs: 0})
	return cs
}

func argmax(v []float32) int {
	b := 0
	for i, x := range v {
		if x > v[b] {
			b = i
		}
	}
	return b
}

// TestSampleMatchesReference runs rows with very different parameters in one call and checks
// every token against model.SampleReference (exactly) and the logprobs to 1e-4.
func TestSampleMatchesReference(t *testing.T) {
	b := newGPU(t)
	for _, vocab := range []int{320, 128256} {
		r := rand.New(rand.NewPCG(uint64(vocab), 7))
		cs := sampleCases(r, vocab)
		n := len(cs)
		flat := make([]float32, 0, n*vocab)
		rows := make([]model.SampleRow, n)
		for i, c := range cs {
			flat = append(flat, c.logits...)
			rows[i] = c.row
		}
		lt := b.Alloc(n, vocab)
		if err := b.Write(lt, flat); err != nil {
			t.Fatal(err)
		}
		out := make([]model.SampleResult, n)
		if err := b.Sample(lt, rows, out); err != nil {
			t.Fatal(err)
		}
		mism := 0
		for i, c := range cs {
			var want model.SampleResult
			l := slices.Clone(c.logits)
			row := c.row
			model.SampleReference(l, &row, &want)
			got := out[i]
			if got.Token != want.Token {
				mism++
				t.Errorf("vocab %d row %d (%s): token %d, reference %d", vocab, i, c.name, got.Token, want.Token)
			}
			if !allowed(c.row.Allowed, got.Token) && want.Token != 0 {
				t.Errorf("vocab %d row %d (%s): token %d outside the mask", vocab, i, c.name, got.Token)
			}
			for _, bt := range c.row.Banned {
				if bt == got.Token && len(c.row.Banned) < vocab {
					t.Errorf("vocab %d row %d (%s): banned token %d chosen", vocab, i, c.name, bt)
				}
			}
			if math.Abs(float64(got.Logprob-want.Logprob)) > 1e-4 {
				t.Errorf("vocab %d row %d (%s): logprob %g, reference %g", vocab, i, c.name, got.Logprob, want.Logprob)
			}
			if len(got.Top) != len(want.Top) {
				t.Errorf("vocab %d row %d (%s): %d top logprobs, reference %d", vocab, i, c.name, len(got.Top), len(want.Top))
				continue
			}
			for j := range got.Top {
				if got.Top[j].Token != want.Top[j].Token || math.Abs(float64(got.Top[j].Logprob-want.Top[j].Logprob)) > 1e-4 {
					t.Errorf("vocab %d row %d (%s): top[%d] = %v, reference %v", vocab, i, c.name, j, got.Top[j], want.Top[j])
				}
			}
		}
		t.Logf("vocab %d: %d rows, %d token mismatches", vocab, n, mism)
		b.Free(lt)
	}
	// Shapes are checked before anything runs.
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
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}

// randomMask allows each token with probability density (at least one token).
func randomMask(r *rand.Rand, vocab int, density float64) []uint64 {
	m := make([]uint64, (vocab+63)/64)
	for t := 0; t < vocab; t++ {
		if r.Float64() < density {
			m[t/64] |= 1 << (t % 64)
		}
	}
	t := r.IntN(vocab)
	m[t/64] |= 1 << (t % 64)
	return m
}

// onlyMask allows the listed tokens; allButMask every token except the listed ones.
func onlyMask(vocab int, tokens ...int) []uint64 {
	m := make([]uint64, (vocab+63)/64)
	for _, t := range tokens {
		m[t/64] |= 1 << (t % 64)
	}
	return m
}

func allButMask(vocab int, tokens ...int) []uint64 {
	m := onlyMask(vocab, tokens...)
	for i := range m {
		m[i] = ^m[i]
	}
	return m
}

// allowed reports whether mask (nil: none) allows token t.
func allowed(mask []uint64, t int32) bool { return mask == nil || mask[t/64]>>(t%64)&1 != 0 }

// randomBias draws n logit_bias entries in [-100, 100], a few tokens listed twice.
func randomBias(r *rand.Rand, vocab, n int) []model.TokenBias {
	b := make([]model.TokenBias, n)
	for i := range b {
		b[i] = model.TokenBias{Token: int32(r.IntN(vocab)), Bias: float32(r.Float64()*200 - 100)}
		if i > 0 && r.IntN(8) == 0 {
			b[i].Token = b[r.IntN(i)].Token
		}
	}
	return b
}

// TestSampleEqualsCPU: the CPU is the oracle for sampling. With identical logits and the same
// U, a row picks the identical token on the GPU and on the CPU backend, draw for draw: 2,000
// draws of each parameter set (T=1 top-p 0.9, top-k, min-p, everything with penalties and
// banned ids; constrained rows' allowed-token masks: random, a single allowed token, all but
// the best token allowed, masks on some rows of a launch only, one mask shared by many rows;
// logit_bias lists up to model.MaxSampleBias entries with repeated tokens) at a 4,096-token
// vocabulary and 256 at 128,256, rows of different parameters sharing launches. Logprobs agree
// within 1e-4 (the GPU's log-sum-exp is float32), and no row picks a token its mask bans.
func TestSampleEqualsCPU(t *testing.T) {
	g := newGPU(t)
	c := cpu.New(0)
	defer c.Close()
	var shared []uint64 // one mask for every row of a launch, as rows in one grammar state share it
	params := []struct {
		name string
		row  model.SampleRow
		// fill, when set, gives row i of a launch its mask or bias (logits l, already drawn).
		fill func(r *rand.Rand, vocab, i int, l []float32, row *model.SampleRow)
	}{
		{"T=1 top-p 0.9", model.SampleRow{Temperature: 1, TopP: 0.9, Logprobs: -1}, nil},
		{"T=1 top-k 50", model.SampleRow{Temperature: 1, TopK: 50, Logprobs: -1}, nil},
		{"T=0.8 top-k 2000", model.SampleRow{Temperature: 0.8, TopK: 2000, Logprobs: 0}, nil},
		{"T=1 min-p 0.05", model.SampleRow{Temperature: 1, MinP: 0.05, Logprobs: 3}, nil},
		{"T=0.7 top-k 40 top-p 0.95 min-p 0.02 penalties", model.SampleRow{Temperature: 0.7, TopK: 40, TopP: 0.95, MinP: 0.02,
			RepetitionPenalty: 1.2, FrequencyPenalty: 0.4, PresencePenalty: 0.3, Banned: []int32{0, 1, 2}, Logprobs: 0}, nil},
		{"T=1.3 top-p 0.5 ties", model.SampleRow{Temperature: 1.3, TopP: 0.5, Logprobs: -1}, nil},
		{"T=1 top-p 0.9 random masks on half the rows", model.SampleRow{Temperature: 1, TopP: 0.9, Logprobs: 2},
			func(r *rand.Rand, vocab, i int, _ []float32, row *model.SampleRow) {
				if i%2 == 0 {
					row.Allowed = randomMask(r, vocab, []float64{0.001, 0.05, 0.5, 0.95}[r.IntN(4)])
				}
			}},
		{"T=0.8 top-k 50 a single allowed token", model.SampleRow{Temperature: 0.8, TopK: 50, Logprobs: 0},
			func(r *rand.Rand, vocab, _ int, _ []float32, row *model.SampleRow) {
				row.Allowed = onlyMask(vocab, r.IntN(vocab))
			}},
		{"greedy all but the best token allowed", model.SampleRow{Logprobs: 3},
			func(_ *rand.Rand, vocab, _ int, l []float32, row *model.SampleRow) {
				row.Allowed = allButMask(vocab, argmax(l))
			}},
		{"T=1 min-p 0.05 all but the best token allowed", model.SampleRow{Temperature: 1, MinP: 0.05, Logprobs: -1},
			func(_ *rand.Rand, vocab, _ int, l []float32, row *model.SampleRow) {
				row.Allowed = allButMask(vocab, argmax(l))
			}},
		{"T=1 top-k 1000 top-p 0.95 one mask shared by every row", model.SampleRow{Temperature: 1, TopK: 1000, TopP: 0.95, Logprobs: -1},
			func(r *rand.Rand, vocab, i int, _ []float32, row *model.SampleRow) {
				if i == 0 {
					shared = randomMask(r, vocab, 0.3)
				}
				row.Allowed = shared
			}},
		{"T=0.7 top-k 40 top-p 0.95 bias, masks, penalties and bans", model.SampleRow{Temperature: 0.7, TopK: 40, TopP: 0.95,
			RepetitionPenalty: 1.2, FrequencyPenalty: 0.4, PresencePenalty: 0.3, Banned: []int32{0, 1, 2}, Logprobs: 5},
			func(r *rand.Rand, vocab, i int, _ []float32, row *model.SampleRow) {
				row.Bias = randomBias(r, vocab, 1+r.IntN(64))
				row.Hist = histFor(r, vocab, 64)
				if i%3 != 0 {
					row.Allowed = randomMask(r, vocab, 0.5)
				}
			}},
		{"greedy bias +-100 (forced and banned tokens)", model.SampleRow{Logprobs: 0},
			func(r *rand.Rand, vocab, _ int, l []float32, row *model.SampleRow) {
				row.Bias = []model.TokenBias{{Token: int32(argmax(l)), Bias: -100}, {Token: int32(r.IntN(vocab)), Bias: 100}}
			}},
		{"T=1 top-p 0.9 the most bias entries", model.SampleRow{Temperature: 1, TopP: 0.9, Logprobs: 0},
			func(r *rand.Rand, vocab, _ int, _ []float32, row *model.SampleRow) {
				row.Bias = randomBias(r, vocab, model.MaxSampleBias)
			}},
	}
	for _, vocab := range []int{4096, 128256} {
		draws, batch := 2000, 250
		if vocab > 100000 {
			draws, batch = 256, 128
		}
		r := rand.New(rand.NewPCG(uint64(vocab), 11))
		for _, p := range params {
			mism := 0
			for d := 0; d < draws; d += batch {
				n := min(batch, draws-d)
				flat := make([]float32, 0, n*vocab)
				rows := make([]model.SampleRow, n)
				for i := range rows {
					l := testLogits(r, vocab, 2, p.name == "T=1.3 top-p 0.5 ties")
					flat = append(flat, l...)
					rows[i] = p.row
					rows[i].U = min(float32(r.Float64()), math.Nextafter32(1, 0))
					if p.row.RepetitionPenalty != 0 {
						rows[i].Hist = histFor(r, vocab, 64)
					}
					if p.fill != nil {
						p.fill(r, vocab, i, l, &rows[i])
					}
				}
				gl, cl := g.Alloc(n, vocab), c.Alloc(n, vocab)
				if err := g.Write(gl, flat); err != nil {
					t.Fatal(err)
				}
				if err := c.Write(cl, flat); err != nil {
					t.Fatal(err)
				}
				gout, cout := make([]model.SampleResult, n), make([]model.SampleResult, n)
				if err := g.Sample(gl, rows, gout); err != nil {
					t.Fatal(err)
				}
				if err := c.Sample(cl, rows, cout); err != nil {
					t.Fatal(err)
				}
				g.Free(gl)
				for i := range rows {
					gr, cr := gout[i], cout[i]
					if gr.Token != cr.Token {
						mism++
						if mism <= 5 {
							t.Errorf("vocab %d %s draw %d (U %v): GPU token %d, CPU %d", vocab, p.name, d+i, rows[i].U, gr.Token, cr.Token)
						}
					}
					if math.Abs(float64(gr.Logprob-cr.Logprob)) > 1e-4 || len(gr.Top) != len(cr.Top) {
						t.Errorf("vocab %d %s draw %d: GPU logprobs %v %v, CPU %v %v", vocab, p.name, d+i, gr.Logprob, gr.Top, cr.Logprob, cr.Top)
					}
					if !allowed(rows[i].Allowed, gr.Token) {
						t.Errorf("vocab %d %s draw %d: GPU token %d is outside the row's mask", vocab, p.name, d+i, gr.Token)
					}
				}
			}
			if mism > 0 {
				t.Errorf("vocab %d %s: %d of %d draws differ between GPU and CPU", vocab, p.name, mism, draws)
			} else {
				t.Logf("vocab %d %s: %d of %d draws identical", vocab, p.name, draws, draws)
			}
		}
	}
	if err := g.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestSampleDistribution draws one row many times (different U) and checks that the device's
// frequencies follow the kept distribution: the index-order walk decides which token a U
// picks, not how often each is picked.
func TestSampleDistribution(t *testing.T) {
	b := newGPU(t)
	const vocab, n = 64, 4096
	r := rand.New(rand.NewPCG(3, 4))
	l := testLogits(r, vocab, 1.5, false)
	flat := make([]float32, 0, n*vocab)
	rows := make([]model.SampleRow, n)
	for i := range rows {
		flat = append(flat, l...)
		rows[i] = model.SampleRow{Temperature: 1, TopK: 8, Logprobs: -1, U: (float32(i) + 0.5) / n}
	}
	lt := b.Alloc(n, vocab)
	if err := b.Write(lt, flat); err != nil {
		t.Fatal(err)
	}
	out := make([]model.SampleResult, n)
	if err := b.Sample(lt, rows, out); err != nil {
		t.Fatal(err)
	}
	order := make([]int, vocab)
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, c int) int {
		if l[a] != l[c] {
			if l[a] > l[c] {
				return -1
			}
			return 1
		}
		return a - c
	})
	var sum float64
	for _, i := range order[:8] {
		sum += math.Exp(float64(l[i] - l[order[0]]))
	}
	count := map[int32]int{}
	for _, o := range out {
		count[o.Token]++
	}
	for _, i := range order[:8] {
		want := math.Exp(float64(l[i]-l[order[0]])) / sum
		got := float64(count[int32(i)]) / n
		if math.Abs(got-want) > 1.5/n {
			t.Errorf("token %d drawn with frequency %.4f, probability %.4f", i, got, want)
		}
		delete(count, int32(i))
	}
	if len(count) > 0 {
		t.Errorf("tokens outside the top 8 drawn: %v", count)
	}
}

// TestForwardSampleGreedyFixtures: on every fixture model, ForwardSample with greedy rows picks
// Forward's argmax, with the same logprob, step after step (prefill, then decode batched).
func TestForwardSampleGreedyFixtures(t *testing.T) {
	b := newGPU(t)
	var _ model.DeviceSampler = b
	for _, name := range fixture.Models {
		t.Run(name, func(t *testing.T) {
			fx, _, h := fixture.Open(t, name, b)
			checkGreedySteps(t, b, h.R, fx.Cases[:min(4, len(fx.Cases))])
		})
	}
}

func checkGreedySteps(t *testing.T, b *cuda.Backend, r *model.Runner, cases []fixture.Case) {
	const pageSize, pagesPerSeq, decodeSteps = 4, 32, 6
	seqs := make([][]int32, len(cases))
	computed := make([]int, len(cases))
	pages := make([][]int32, len(cases))
	for i, c := range cases {
		for _, tk := range c.Prompt {
			seqs[i] = append(seqs[i], int32(tk))
		}
		for p := 0; p < pagesPerSeq; p++ {
			pages[i] = append(pages[i], int32(i*pagesPerSeq+p))
		}
	}
	V := r.Cfg.VocabSize
	steps := 0
	for step := 0; step <= decodeSteps; step++ {
		// The first round prefills one sequence per step; then every sequence decodes together.
		var batches [][]int
		if step == 0 {
			for i := range cases {
				batches = append(batches, []int{i})
			}
		} else {
			var all []int
			for i := range cases {
				all = append(all, i)
			}
			batches = [][]int{all}
		}
		for _, batch := range batches {
			var s model.Step
			for _, i := range batch {
				start := len(s.Tokens)
				for p := computed[i]; p < len(seqs[i]); p++ {
					s.Tokens = append(s.Tokens, seqs[i][p])
					s.Positions = append(s.Positions, int32(p))
					s.Slots = append(s.Slots, pages[i][p/pageSize]*pageSize+int32(p%pageSize))
				}
				s.Seqs = append(s.Seqs, model.SeqRows{Start: start, N: len(seqs[i]) - computed[i], Len: len(seqs[i]), Pages: pages[i]})
				s.LogitRows = append(s.LogitRows, int32(len(s.Tokens)-1))
			}
			ads := make([]*model.Adapter, len(batch))
			logits := make([]float32, len(batch)*V)
			if err := r.Forward(&s, ads, logits); err != nil {
				t.Fatal(err)
			}
			rows := make([]model.SampleRow, len(batch))
			for k := range rows {
				rows[k] = model.SampleRow{Logprobs: 2}
			}
			out := make([]model.SampleResult, len(batch))
			if err := r.ForwardSample(&s, ads, rows, out); err != nil {
				t.Fatal(err)
			}
			for k, i := range batch {
				row := logits[k*V : (k+1)*V]
				want := argmax(row)
				if int(out[k].Token) != want {
					t.Fatalf("step %d seq %d: ForwardSample token %d, Forward argmax %d", step, i, out[k].Token, want)
				}
				mx := row[want]
				var se float64
				for _, v := range row {
					se += math.Exp(float64(v - mx))
				}
				lp := -math.Log(se)
				if math.Abs(lp-float64(out[k].Logprob)) > 1e-4 {
					t.Fatalf("step %d seq %d: logprob %g, host %g", step, i, out[k].Logprob, lp)
				}
				computed[i] = len(seqs[i])
				seqs[i] = append(seqs[i], out[k].Token)
			}
			steps++
		}
	}
	t.Logf("%d steps, %d sequences: ForwardSample tokens equal Forward's argmax", steps, len(cases))
}

// TestSampleTiming logs how long Sample takes on 128k-vocabulary rows next to copying the same
// logits to the host (what the host sampler needs before it starts). It asserts nothing.
func TestSampleTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	b := newGPU(t)
	const vocab = 128256
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{64, 256} {
		flat := make([]float32, 0, n*vocab)
		l := testLogits(r, vocab, 3, false)
		for i := 0; i < n; i++ {
			flat = append(flat, l...)
		}
		lt := b.Alloc(n, vocab)
		host := make([]float32, n*vocab)
		out := make([]model.SampleResult, n)
		kinds := []struct {
			name string
			row  model.SampleRow
		}{
			{"greedy", model.SampleRow{Logprobs: -1}},
			{"greedy+logprobs5", model.SampleRow{Logprobs: 5}},
			{"T=0.7 top-k 50 top-p 0.9", model.SampleRow{Temperature: 0.7, TopK: 50, TopP: 0.9, Logprobs: -1, U: 0.3}},
			{"T=1 top-k 1000", model.SampleRow{Temperature: 1, TopK: 1000, Logprobs: -1, U: 0.3}},
			{"T=1 top-k 5000 top-p 0.9", model.SampleRow{Temperature: 1, TopK: 5000, TopP: 0.9, Logprobs: -1, U: 0.3}},
			{"T=1 top-p 0.95", model.SampleRow{Temperature: 1, TopP: 0.95, Logprobs: 0, U: 0.3}},
			{"T=1 min-p 0.05 rep 1.1 (hist 512)", model.SampleRow{Temperature: 1, MinP: 0.05, RepetitionPenalty: 1.1, Hist: histFor(r, vocab, 512), Logprobs: -1, U: 0.3}},
		}
		for _, k := range kinds {
			rows := make([]model.SampleRow, n)
			for i := range rows {
				rows[i] = k.row
			}
			const reps = 10
			var best float64 = math.Inf(1)
			for rep := 0; rep < reps; rep++ {
				if err := b.Write(lt, flat); err != nil {
					t.Fatal(err)
				}
				start := nowSeconds()
				if err := b.Sample(lt, rows, out); err != nil {
					t.Fatal(err)
				}
				best = min(best, nowSeconds()-start)
			}
			t.Logf("batch %d vocab %d %-36s Sample %.3f ms", n, vocab, k.name, best*1e3)
		}
		var best float64 = math.Inf(1)
		for rep := 0; rep < 10; rep++ {
			start := nowSeconds()
			if err := b.Read(lt, host); err != nil {
				t.Fatal(err)
			}
			best = min(best, nowSeconds()-start)
		}
		t.Logf("batch %d vocab %d Read of the logits (pageable host memory) %.3f ms", n, vocab, best*1e3)
		b.Free(lt)
	}
}

func nowSeconds() float64 { return float64(time.Now().UnixNano()) / 1e9 }
