//go:build cuda

package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

// The wide LoRA kernels (LORAPLEX_LORA_WIDE) add what the CPU adds within the LoRA sweep's
// bound, and what the plain kernels add within fp32 rounding (another summation order), the
// same bits run after run: for ranks 1 to 64 (odd ones too: the expand's scalar path), input
// widths on and off multiples of 8 (the shrink's scalar path) from one k-slice to the 14
// splits of 14,336, output widths that leave a part of the last column chunk, decode batches
// of 1 to 64 one-row segments, prefill segments (few and many rows: split and unsplit) and a
// prefill chunk beside decode rows.
func TestLoRAWideSweep(t *testing.T) {
	c, wide, plain := cpu.New(0), newGPU(t), newGPU(t)
	defer c.Close()
	wide.SetLoRAWide(true)
	plain.SetLoRAWide(false)
	backends := []model.Backend{c, wide, plain}
	r := rand.New(rand.NewPCG(41, 42))
	ranks := []int{1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 48, 63, 64}
	layouts := []struct { // rows per segment
		name string
		lens []int
	}{
		{"decode1", []int{1}},
		{"decode7", repeatInts(1, 7)},
		{"decode64", repeatInts(1, 64)},
		{"prefill4x16", repeatInts(16, 4)},
		{"prefill3x200", repeatInts(200, 3)},
		{"prefill+decode", append([]int{100}, repeatInts(1, 20)...)},
	}
	for _, sh := range [][2]int{{4096, 4096}, {4096, 1024}, {4096, 14336}, {14336, 4096}, {100, 24}, {1000, 4097}, {4100, 100}, {24, 1000}, {2048, 333}} {
		in, out := sh[0], sh[1]
		type factors [3]struct{ a, b model.Tensor } // per backend
		ads := make([]factors, len(ranks))
		for i, rk := range ranks {
			ha, hb := hostBF16(r, rk, in, 1/math.Sqrt(float64(in))), hostBF16(r, out, rk, 1/math.Sqrt(float64(rk)))
			for bi, b := range backends {
				var err error
				if ads[i][bi].a, err = b.Upload(ha, rk, in); err != nil {
					t.Fatal(err)
				}
				if ads[i][bi].b, err = b.Upload(hb, out, rk); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, layout := range layouts {
			lens := layout.lens
			t.Run(fmt.Sprintf("in%d_out%d/%s", in, out, layout.name), func(t *testing.T) {
				rows := 0
				for _, n := range lens {
					rows += n
				}
				xs, base := randFloats(r, rows*in), randFloats(r, rows*out)
				segs := make([][]model.LoRASeg, len(backends))
				start := 0
				for s, n := range lens {
					ad, scale := ads[(s*7+len(lens))%len(ads)], float32(0.5+r.Float64())
					for bi := range backends {
						segs[bi] = append(segs[bi], model.LoRASeg{Start: start, N: n, A: ad[bi].a, B: ad[bi].b, Scale: scale})
					}
					start += n
				}
				// The CPU, the wide kernels, the plain ones, the wide ones again (the same bits).
				runs := []int{0, 1, 2, 1} // indices into backends and segs
				results := make([][]float32, len(runs))
				for ri, bi := range runs {
					b := backends[bi]
					x, o := b.Alloc(rows, in), b.Alloc(rows, out)
					if err := b.Write(x, xs); err != nil {
						t.Fatal(err)
					}
					if err := b.Write(o, base); err != nil {
						t.Fatal(err)
					}
					b.LoRA(o, x, segs[bi])
					results[ri] = read(t, b, o)
					b.Free(x)
					b.Free(o)
				}
				var scale, dCPU, dPlain float64
				for i, want := range results[0] {
					got := results[1][i]
					if math.IsNaN(float64(got)) || math.IsInf(float64(got), 0) {
						t.Fatalf("element %d is %v", i, got)
					}
					if math.Float32bits(got) != math.Float32bits(results[3][i]) {
						t.Fatalf("element %d: %v, then %v on the same input", i, got, results[3][i])
					}
					scale = max(scale, math.Abs(float64(want)))
					dCPU = max(dCPU, math.Abs(float64(got-want)))
					dPlain = max(dPlain, math.Abs(float64(got-results[2][i])))
				}
				if dCPU > 2e-3*scale {
					t.Fatalf("wide differs from the CPU by %.3g, more than 2e-3 x max %.3g", dCPU, scale)
				}
				if dPlain > 1e-5*scale {
					t.Fatalf("wide differs from the plain kernels by %.3g, more than 1e-5 x max %.3g", dPlain, scale)
				}
			})
		}
		for i := range ads {
			for bi, b := range backends {
				b.Free(ads[i][bi].a)
				b.Free(ads[i][bi].b)
			}
		}
	}
	for _, b := range []*cuda.Backend{wide, plain} {
		if err := b.Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// repeatInts is n copies of v.
func repeatInts(v, n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = v
	}
	return s
}

// With the wide LoRA kernels, alone and grouped (LORAPLEX_LORA_GROUP), the engine-core fixture
// suite still matches the transformers/peft reference within the bf16 bound: every family,
// base + four adapters in one mixed batch, prefill whole and chunked, decode steps replayed
// from CUDA graphs.
func TestLoRAWideFixturesCUDA(t *testing.T) {
	b := newGPU(t)
	b.SetLoRAWide(true)
	for _, name := range fixture.Models {
		t.Run(name, func(t *testing.T) {
			fx, cfg, h := fixture.Open(t, name, b)
			adapters := fixtureadapters.Upload(t, name, cfg, b)
			for _, group := range []bool{false, true} {
				b.SetLoRAGroup(group)
				runChunkings(t, h, fx.Cases, adapters, fmt.Sprintf("%s group %v", name, group))
			}
			if err := b.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
	if b.GraphCount() == 0 {
		t.Fatal("no decode step was recorded as a CUDA graph")
	}
}

// A decode step recorded with the wide LoRA kernels split over the input (4,096 wide: 4
// k-slices for 64 rows) replays for other adapters with the same step key (segment count,
// rows, largest rank) but more packed intermediates (every rank at the largest, where the
// recording had smaller ones too): the split stride the graph bakes in bounds every layout of
// the key, and the replay gives bitwise what a direct step gives for those adapters.
func TestLoRAWideGraphReplay(t *testing.T) {
	b := newGPU(t)
	b.SetLoRAWide(true)
	if err := b.AllocKV(model.KVSpec{Layers: 1, Pages: 8, PageSize: 8, KVHeads: 1, HeadDim: 8}); err != nil {
		t.Fatal(err)
	}
	_, dec := promptThenDecode([]int{0, 1, 2, 3, 4, 5, 6, 7}, []int{3}, 8)
	if err := b.Prepare(&dec); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(43, 44))
	const rows, in, out = 64, 4096, 1000
	upload := func(h model.HostTensor) model.Tensor {
		x, err := b.Upload(h, h.Shape[0], h.Shape[1])
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	segsOf := func(ranks func(i int) int) []model.LoRASeg {
		var segs []model.LoRASeg
		for i := 0; i < rows; i++ {
			rk := ranks(i)
			segs = append(segs, model.LoRASeg{Start: i, N: 1, A: upload(hostBF16(r, rk, in, 1/math.Sqrt(in))),
				B: upload(hostBF16(r, out, rk, 1/math.Sqrt(float64(rk)))), Scale: float32(0.5 + r.Float64())})
		}
		return segs
	}
	recorded := segsOf(func(i int) int { return []int{16, 8, 1, 5}[i%4] })
	replayed := segsOf(func(int) int { return 16 })
	x, o := b.Alloc(rows, in), b.Alloc(rows, out)
	if err := b.Write(x, randFloats(r, rows*in)); err != nil {
		t.Fatal(err)
	}
	base := randFloats(r, rows*out)
	key := []byte("lora wide replay")
	run := func(segs []model.LoRASeg, key []byte, wantReplay bool) []float32 {
		if err := b.Write(o, base); err != nil {
			t.Fatal(err)
		}
		if replay := b.BeginStep(key); replay != wantReplay {
			t.Fatalf("BeginStep replays %v, want %v", replay, wantReplay)
		}
		b.LoRA(o, x, segs)
		if err := b.EndStep(); err != nil {
			t.Fatal(err)
		}
		return read(t, b, o)
	}
	direct := run(replayed, nil, false) // also grows the buffers, which a recording may not
	run(recorded, key, false)
	if b.GraphCount() != 1 {
		t.Fatalf("%d recordings, want 1", b.GraphCount())
	}
	got := run(replayed, key, true)
	for i := range direct {
		if math.Float32bits(got[i]) != math.Float32bits(direct[i]) {
			t.Fatalf("element %d: %v replayed, %v direct", i, got[i], direct[i])
		}
	}
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}

// In deterministic mode the wide LoRA kernels step aside: a row's LoRA is bitwise the same
// alone and inside a 600-row prefill segment of the same adapter, where the wide shrink would
// split a 4,096-wide input in 4 for the lone row and not at all for the segment (logged: how
// many elements move between the two with the mode off).
func TestLoRAWideStepsAsideInDeterministicMode(t *testing.T) {
	b := newGPU(t)
	b.SetLoRAWide(true)
	r := rand.New(rand.NewPCG(45, 46))
	const rows, in, out, rank = 600, 4096, 1000, 16
	upload := func(h model.HostTensor) model.Tensor {
		x, err := b.Upload(h, h.Shape[0], h.Shape[1])
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	a, bb := upload(hostBF16(r, rank, in, 1/math.Sqrt(in))), upload(hostBF16(r, out, rank, 0.25))
	xs, base := randFloats(r, rows*in), randFloats(r, rows*out)
	lora := func(first, n int) []float32 {
		x, o := b.Alloc(n, in), b.Alloc(n, out)
		defer b.Free(x)
		defer b.Free(o)
		if err := b.Write(x, xs[first*in:(first+n)*in]); err != nil {
			t.Fatal(err)
		}
		if err := b.Write(o, base[first*out:(first+n)*out]); err != nil {
			t.Fatal(err)
		}
		b.LoRA(o, x, []model.LoRASeg{{Start: 0, N: n, A: a, B: bb, Scale: 0.75}})
		return read(t, b, o)
	}
	checkRowsAlone(t, b, rows, out, lora)
}

// checkRowsAlone runs all rows through run (rows [first, first + n) in a call of their own) and
// rows 0, 137 and the last alone, with deterministic mode off and on: on, each row alone must be
// bitwise the row inside the call; off, how many elements differ is logged.
func checkRowsAlone(t *testing.T, b *cuda.Backend, rows, out int, run func(first, n int) []float32) {
	t.Helper()
	for _, invariant := range []bool{false, true} {
		b.SetBatchInvariant(invariant)
		batch := run(0, rows)
		moved := 0
		for _, i := range []int{0, 137, rows - 1} {
			alone := run(i, 1)
			for c, v := range alone {
				if math.Float32bits(v) != math.Float32bits(batch[i*out+c]) {
					if invariant {
						t.Fatalf("row %d column %d: %v alone, %v in the call", i, c, v, batch[i*out+c])
					}
					moved++
				}
			}
		}
		if !invariant {
			t.Logf("without deterministic mode %d of %d elements differ alone and in the call", moved, 3*out)
		}
	}
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}
