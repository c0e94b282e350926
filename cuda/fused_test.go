//go:build cuda

package cuda_test

import (
	"encoding/binary"
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

// trio runs the same ops on the CPU backend (the oracle), on a GPU backend with the fused
// kernels off and on another with them on.
type trio struct {
	c            *cpu.Backend
	plain, fused *cuda.Backend
}

func newTrio(t *testing.T) trio {
	t.Helper()
	tr := trio{c: cpu.New(0), plain: newGPU(t), fused: newGPU(t)}
	t.Cleanup(tr.c.Close)
	tr.plain.SetFusedDecode(false)
	tr.plain.SetLoRAGroup(false)
	tr.fused.SetFusedDecode(true)
	tr.fused.SetLoRAGroup(true)
	return tr
}

func (tr trio) each(f func(b model.Backend)) {
	f(tr.c)
	f(tr.plain)
	f(tr.fused)
}

// tensors makes one tensor per backend holding vals (zeros when nil).
func (tr trio) tensors(t *testing.T, rows, cols int, vals []float32) [3]model.Tensor {
	t.Helper()
	var out [3]model.Tensor
	for i, b := range []model.Backend{tr.c, tr.plain, tr.fused} {
		out[i] = b.Alloc(rows, cols)
		if vals != nil {
			if err := b.Write(out[i], vals); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}

// uploads uploads h to every backend.
func (tr trio) uploads(t *testing.T, h model.HostTensor) [3]model.Tensor {
	t.Helper()
	var out [3]model.Tensor
	for i, b := range []model.Backend{tr.c, tr.plain, tr.fused} {
		var err error
		if out[i], err = b.Upload(h, h.Shape[0], h.Shape[len(h.Shape)-1]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func read(t *testing.T, b model.Backend, x model.Tensor) []float32 {
	t.Helper()
	v := make([]float32, x.Rows*x.Cols)
	if err := b.Read(x, v); err != nil {
		t.Fatal(err)
	}
	return v
}

// check compares the three results of one tensor: the fused GPU path with the CPU within
// cpuTol of the largest CPU value, and with the unfused GPU path within plainTol of it. It
// returns how many elements of the fused path equal the unfused path's bit for bit.
func (tr trio) check(t *testing.T, what string, x [3]model.Tensor, cpuTol, plainTol float64) (same, all int) {
	t.Helper()
	want, plain, got := read(t, tr.c, x[0]), read(t, tr.plain, x[1]), read(t, tr.fused, x[2])
	var scale, dCPU, dPlain float64
	for i := range want {
		if math.IsNaN(float64(got[i])) || math.IsInf(float64(got[i]), 0) {
			t.Fatalf("%s: element %d is %v", what, i, got[i])
		}
		scale = max(scale, math.Abs(float64(want[i])))
		dCPU = max(dCPU, math.Abs(float64(got[i]-want[i])))
		dPlain = max(dPlain, math.Abs(float64(got[i]-plain[i])))
		if math.Float32bits(got[i]) == math.Float32bits(plain[i]) {
			same++
		}
	}
	if dCPU > cpuTol*scale {
		t.Fatalf("%s: fused differs from the CPU by %.3g, more than %.3g x max %.3g", what, dCPU, cpuTol, scale)
	}
	if dPlain > plainTol*scale {
		t.Fatalf("%s: fused differs from the unfused GPU path by %.3g, more than %.3g x max %.3g", what, dPlain, plainTol, scale)
	}
	return same, len(want)
}

// promptThenDecode lays out sequences of lens[i] prompt rows (token 0, positions 0..lens[i]-1)
// on pages taken in order from perm, each with room for one position more: fill writes the
// prompts into the cache, dec is one decode row per sequence at the next position, reading its
// whole prompt.
func promptThenDecode(perm, lens []int, pageSize int) (fill, dec model.Step) {
	next := 0
	for _, l := range lens {
		pg := make([]int32, (l+1+pageSize-1)/pageSize)
		for i := range pg {
			pg[i] = int32(perm[next])
			next++
		}
		start := len(fill.Tokens)
		for j := 0; j < l; j++ {
			fill.Tokens = append(fill.Tokens, 0)
			fill.Positions = append(fill.Positions, int32(j))
			fill.Slots = append(fill.Slots, pg[j/pageSize]*int32(pageSize)+int32(j%pageSize))
		}
		fill.Seqs = append(fill.Seqs, model.SeqRows{Start: start, N: l, Len: l, Pages: pg})
		dec.Tokens = append(dec.Tokens, 0)
		dec.Positions = append(dec.Positions, int32(l))
		dec.Slots = append(dec.Slots, pg[l/pageSize]*int32(pageSize)+int32(l%pageSize))
		dec.Seqs = append(dec.Seqs, model.SeqRows{Start: len(dec.Seqs), N: 1, Len: l + 1, Pages: pg})
	}
	return fill, dec
}

// prefillStep lays out one chunk per sequence, sequence i holding lens[i] rows at positions
// 0..lens[i]-1 on scrambled pages, so every position attention reads is written by the step.
func prefillStep(r *rand.Rand, lens []int, pageSize, pages int) *model.Step {
	perm := r.Perm(pages)
	next := 0
	s := &model.Step{}
	for _, n := range lens {
		pg := make([]int32, (n+pageSize-1)/pageSize)
		for i := range pg {
			pg[i] = int32(perm[next])
			next++
		}
		start := len(s.Tokens)
		for j := 0; j < n; j++ {
			s.Tokens = append(s.Tokens, 0)
			s.Positions = append(s.Positions, int32(j))
			s.Slots = append(s.Slots, pg[j/pageSize]*int32(pageSize)+int32(j%pageSize))
		}
		s.Seqs = append(s.Seqs, model.SeqRows{Start: start, N: n, Len: n, Pages: pg})
		s.LogitRows = append(s.LogitRows, int32(start+n-1))
	}
	return s
}

// The fused RoPE + KV store leaves q, k and the cache as RoPE(q), RoPE(k), StoreKV(k, v) leave
// them: against the CPU within fp32 rounding (q, k) and the bf16 bound (attention over the
// cache), against the unfused GPU kernels within 1e-6 (q, k) and 1e-3 (attention), over head dims, MHA/GQA/MQA and decode
// rows (single-row sequences) as well as prefill chunks.
func TestFusedRoPEStoreKV(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	type shape struct{ heads, kv, dim int }
	shapes := []shape{{4, 4, 16}, {8, 2, 64}, {8, 1, 128}, {4, 2, 256}, {6, 3, 80}, {32, 8, 128}, {4, 2, 6}}
	layouts := [][]int{{1}, {1, 1, 1}, {5, 1, 37}, {64}}
	for _, sh := range shapes {
		for _, lens := range layouts {
			t.Run(fmt.Sprintf("h%d_kv%d_d%d/%v", sh.heads, sh.kv, sh.dim, lens), func(t *testing.T) {
				tr := newTrio(t)
				const pageSize, pages, maxPos = 8, 64, 96
				spec := model.KVSpec{Layers: 2, Pages: pages, PageSize: pageSize, KVHeads: sh.kv, HeadDim: sh.dim}
				tr.each(func(b model.Backend) {
					if err := b.AllocKV(spec); err != nil {
						t.Fatal(err)
					}
				})
				s := prefillStep(r, lens, pageSize, pages)
				tr.each(func(b model.Backend) {
					if err := b.Prepare(s); err != nil {
						t.Fatal(err)
					}
				})
				n, qw, kw := len(s.Tokens), sh.heads*sh.dim, sh.kv*sh.dim
				table := tr.tensors(t, maxPos, sh.dim, randFloats(r, maxPos*sh.dim))
				q := tr.tensors(t, n, qw, randFloats(r, n*qw))
				k := tr.tensors(t, n, kw, randFloats(r, n*kw))
				v := tr.tensors(t, n, kw, randFloats(r, n*kw))
				const layer = 1
				for i, b := range []model.Backend{tr.c, tr.plain} {
					b.RoPE(q[i].Reshape(n*sh.heads, sh.dim), sh.heads, table[i])
					b.RoPE(k[i].Reshape(n*sh.kv, sh.dim), sh.kv, table[i])
					b.StoreKV(layer, k[i], v[i])
				}
				if tr.plain.RoPEStoreKV(layer, q[1], k[1], v[1], sh.heads, sh.kv, table[1]) {
					t.Fatal("RoPEStoreKV ran with fusion switched off")
				}
				if !tr.fused.RoPEStoreKV(layer, q[2], k[2], v[2], sh.heads, sh.kv, table[2]) {
					t.Fatal("RoPEStoreKV declined with fusion on")
				}
				tr.check(t, "rotated q", q, 1e-5, 1e-6)
				tr.check(t, "rotated k", k, 1e-5, 1e-6)
				out := tr.tensors(t, n, qw, nil)
				ap := model.AttnParams{Heads: sh.heads, KVHeads: sh.kv, HeadDim: sh.dim, Scale: float32(1 / math.Sqrt(float64(sh.dim)))}
				for i, b := range []model.Backend{tr.c, tr.plain, tr.fused} {
					b.Attention(out[i], q[i], layer, ap)
				}
				// 1e-3: should nvcc contract one rotation differently in the two kernels, a key may
				// round to the neighbouring bf16 value.
				same, all := tr.check(t, "attention over the stored cache", out, 2e-2, 1e-3)
				t.Logf("attention: %d of %d elements bitwise equal to the unfused path", same, all)
				if err := tr.fused.Err(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// The fused gate/up GEMV with SwiGLU computes silu(x·Wgᵀ) * (x·Wuᵀ) as MatMul, MatMul and SiluMul
// do: against the CPU within fp32 rounding, against the unfused GPU path (two GEMVs and
// silu_mul) within 1e-6, over row counts 1..8 and shapes with ragged tails; beyond the GEMV
// kernel's rows or with fusion off it declines.
func TestFusedGateUpSiLU(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	for _, sh := range [][3]int{{1, 64, 64}, {1, 1000, 520}, {2, 96, 160}, {3, 384, 2048}, {5, 333, 8}, {8, 512, 4096}, {1, 14336, 4096}} {
		n, m, k := sh[0], sh[1], sh[2]
		t.Run(fmt.Sprintf("n%d_m%d_k%d", n, m, k), func(t *testing.T) {
			tr := newTrio(t)
			tr.plain.SetGEMVRows(8)
			tr.fused.SetGEMVRows(8)
			wg := tr.uploads(t, hostBF16(r, m, k, 1/math.Sqrt(float64(k))))
			wu := tr.uploads(t, hostBF16(r, m, k, 1/math.Sqrt(float64(k))))
			x := tr.tensors(t, n, k, randFloats(r, n*k))
			gate, up := tr.tensors(t, n, m, nil), tr.tensors(t, n, m, nil)
			act := tr.tensors(t, n, m, nil)
			for i, b := range []model.Backend{tr.c, tr.plain} {
				b.MatMul(gate[i], x[i], wg[i])
				b.MatMul(up[i], x[i], wu[i])
				b.SiluMul(act[i], gate[i], up[i])
			}
			if tr.plain.GateUpSiLU(act[1], x[1], wg[1], wu[1]) {
				t.Fatal("GateUpSiLU ran with fusion switched off")
			}
			if !tr.fused.GateUpSiLU(act[2], x[2], wg[2], wu[2]) {
				t.Fatal("GateUpSiLU declined a GEMV-sized product with fusion on")
			}
			same, all := tr.check(t, "act", act, 1e-4, 1e-6)
			t.Logf("%d of %d elements bitwise equal to the unfused path", same, all)

			// Declines: more rows than the GEMV kernel takes here, and an input not 16-byte aligned.
			tr.fused.SetGEMVRows(n - 1)
			if tr.fused.GateUpSiLU(act[2], x[2], wg[2], wu[2]) {
				t.Fatalf("GateUpSiLU took %d rows with the GEMV limit at %d", n, n-1)
			}
			tr.fused.SetGEMVRows(8)
			if err := tr.fused.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Grouped LoRA adds to each output exactly what one LoRA call per projection adds: against the
// CPU within the LoRA sweep's bound, against the unfused GPU launches within 1e-6 (the same
// arithmetic, expected bit for bit), for q/k/v-like groups of three widths and gate/up-like
// pairs, decode (one row per segment) and prefill segments, mixed ranks, and adapters that
// leave one projection of the group out (an empty or shorter segment list there). The same on
// the wide kernels (LORAPLEX_LORA_WIDE), against separate wide launches: at this input width
// both take one k-slice, so the arithmetic per element is again the same.
func TestLoRAGroupSweep(t *testing.T) {
	r := rand.New(rand.NewPCG(25, 26))
	const in, nAdapters = 512, 12
	ranks := []int{1, 4, 8, 16, 32, 64, 128, 7}
	for _, widths := range [][]int{{384, 128, 128}, {1024, 1024}, {4096, 1024, 1024}} {
		for _, c := range []struct {
			segLen int
			wide   bool
		}{{1, false}, {37, false}, {1, true}, {37, true}} {
			segLen := c.segLen
			t.Run(fmt.Sprintf("out%v/rows=%d/wide=%v", widths, segLen, c.wide), func(t *testing.T) {
				tr := newTrio(t)
				tr.plain.SetLoRAWide(c.wide)
				tr.fused.SetLoRAWide(c.wide)
				groups := len(widths)
				type factors struct{ a, b [3]model.Tensor }
				// ads[i][g]: adapter i's factors for projection g; nil where it has none.
				ads := make([][]*factors, nAdapters)
				for i := range ads {
					ads[i] = make([]*factors, groups)
					for g, w := range widths {
						if (i+g)%5 == 4 { // some adapters skip a projection
							continue
						}
						rk := ranks[(i+g)%len(ranks)]
						ads[i][g] = &factors{a: tr.uploads(t, hostBF16(r, rk, in, 1/math.Sqrt(in))), b: tr.uploads(t, hostBF16(r, w, rk, 1/math.Sqrt(float64(rk))))}
					}
				}
				nseg := 64
				if segLen > 1 {
					nseg = 5
				}
				rows := nseg * segLen
				x := tr.tensors(t, rows, in, randFloats(r, rows*in))
				outs := make([][3]model.Tensor, groups)
				for g, w := range widths {
					outs[g] = tr.tensors(t, rows, w, randFloats(r, rows*w))
				}
				segs := make([][3][]model.LoRASeg, groups) // per group, per backend
				for s := 0; s < nseg; s++ {
					ad, scale := ads[r.IntN(nAdapters)], float32(0.5+r.Float64())
					for g := range widths {
						if f := ad[g]; f != nil {
							for bi := range 3 {
								segs[g][bi] = append(segs[g][bi], model.LoRASeg{Start: s * segLen, N: segLen, A: f.a[bi], B: f.b[bi], Scale: scale})
							}
						}
					}
				}
				for bi, b := range []model.Backend{tr.c, tr.plain} {
					for g := range widths {
						b.LoRA(outs[g][bi], x[bi], segs[g][bi])
					}
				}
				gOuts, gSegs := make([]model.Tensor, groups), make([][]model.LoRASeg, groups)
				for g := range widths {
					gOuts[g], gSegs[g] = outs[g][1], segs[g][1]
				}
				if tr.plain.LoRAGroup(gOuts, x[1], gSegs) {
					t.Fatal("LoRAGroup ran with grouping switched off")
				}
				for g := range widths {
					gOuts[g], gSegs[g] = outs[g][2], segs[g][2]
				}
				if !tr.fused.LoRAGroup(gOuts, x[2], gSegs) {
					t.Fatal("LoRAGroup declined with grouping on")
				}
				for g := range widths {
					same, all := tr.check(t, fmt.Sprintf("projection %d of the group", g), outs[g], 2e-3, 1e-6)
					t.Logf("projection %d: %d of %d elements bitwise equal to separate launches", g, same, all)
				}
				four := []model.Tensor{gOuts[0], gOuts[0], gOuts[0], gOuts[0]}
				if tr.fused.LoRAGroup(four, x[2], [][]model.LoRASeg{gSegs[0], nil, nil, nil}) {
					t.Fatal("LoRAGroup took more projections than LP_LORA_GROUP")
				}
				if err := tr.fused.Err(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// Decode attention matches the CPU under every split rule and on both kernels (per head, and
// grouped: one block per GQA group) and at both depths (LORAPLEX_DECODE_DEEP: at most 32 or 64
// splits), the grouped fill rule also with a chunk floor of 256 (LORAPLEX_GQ_FILL_CHUNK), over
// contexts from 1 to 9,000 positions (unsplit rows, rows at the chunk and tile boundaries, rows
// split 32 and 64 ways), with MHA/GQA/MQA, groups of 1 to 8 and
// one the grouped kernel does not take (16: the per-head kernel runs it), head dims 48 to 256
// and sliding windows, writing every output element; the grouped kernel with its values
// prefetched (LORAPLEX_GQ_PREFETCH) bitwise as without; and under the context rule a row's output
// is bitwise the same alone as inside the batch on either kernel: its split count and every
// summation order depend on its own context only.
func TestDecodeSplitRules(t *testing.T) {
	r := rand.New(rand.NewPCG(27, 28))
	lens := []int{1, 2, 127, 128, 129, 300, 1000, 4096, 5000, 9000} // 9,000: past the context rule's 32 and 64 splits
	type shape struct{ heads, kv, dim, window int }
	for _, sh := range []shape{{8, 2, 64, 0}, {32, 8, 128, 0}, {4, 1, 256, 0}, {8, 8, 128, 300}, {28, 4, 128, 0},
		{8, 1, 80, 1000}, {6, 2, 48, 129}, {16, 1, 64, 0}} {
		t.Run(fmt.Sprintf("h%d_kv%d_d%d_w%d", sh.heads, sh.kv, sh.dim, sh.window), func(t *testing.T) {
			p := pair{cpu.New(0), newGPU(t)}
			defer p.c.Close()
			const pageSize = 16
			pages := 0
			for _, l := range lens {
				pages += (l + 1 + pageSize - 1) / pageSize
			}
			spec := model.KVSpec{Layers: 1, Pages: pages, PageSize: pageSize, KVHeads: sh.kv, HeadDim: sh.dim}
			if err := p.c.AllocKV(spec); err != nil {
				t.Fatal(err)
			}
			if err := p.g.AllocKV(spec); err != nil {
				t.Fatal(err)
			}
			// Every sequence's prompt goes into the cache (no attention needed for that), then
			// one decode row per sequence at the next position.
			fill, dec := promptThenDecode(r.Perm(pages), lens, pageSize)
			width, qw := sh.kv*sh.dim, sh.heads*sh.dim
			for _, s := range []*model.Step{&fill, &dec} {
				n := len(s.Tokens)
				if err := p.c.Prepare(s); err != nil {
					t.Fatal(err)
				}
				if err := p.g.Prepare(s); err != nil {
					t.Fatal(err)
				}
				kc, kg := p.tensor(t, n, width, randFloats(r, n*width))
				vc, vg := p.tensor(t, n, width, randFloats(r, n*width))
				p.c.StoreKV(0, kc, vc)
				p.g.StoreKV(0, kg, vg)
			}
			n := len(dec.Tokens)
			ap := model.AttnParams{Heads: sh.heads, KVHeads: sh.kv, HeadDim: sh.dim, Scale: float32(1 / math.Sqrt(float64(sh.dim))), Window: sh.window}
			qc, qg := p.tensor(t, n, qw, randFloats(r, n*qw))
			oc, og := p.tensor(t, n, qw, nil)
			p.c.Attention(oc, qc, 0, ap)
			poison := nanFloats(n * qw)
			for _, gd := range []struct {
				grouped, deep bool
				floor         int // the grouped fill rule's chunk floor (0: the default)
			}{{false, false, 0}, {true, false, 0}, {false, true, 0}, {true, true, 0}, {true, true, 64}, {true, false, 256}} {
				grouped, deep := gd.grouped, gd.deep
				p.g.SetGroupedDecode(grouped)
				p.g.SetDecodeDeep(deep)
				if gd.floor > 0 { // the last cases: the default floor is LP_GQ_FILL_CHUNK until here
					p.g.SetGroupedFillChunk(gd.floor)
				}
				for _, rule := range []cuda.DecodeSplit{cuda.DecodeSplitFill, cuda.DecodeSplitContext, cuda.DecodeSplitOff} {
					p.g.SetDecodeSplit(rule)
					if err := p.g.Prepare(&dec); err != nil {
						t.Fatal(err)
					}
					if err := p.g.Write(og, poison); err != nil {
						t.Fatal(err)
					}
					p.g.Attention(og, qg, 0, ap)
					rel := p.compare(t, fmt.Sprintf("decode attention, grouped %v, deep %v, floor %d, split rule %s", grouped, deep, gd.floor, rule), oc, og, 2e-2)
					t.Logf("grouped %v, deep %v, floor %d, split rule %s: worst difference %.2e of the largest output", grouped, deep, gd.floor, rule, rel)
					if grouped {
						// The values' prefetch (LORAPLEX_GQ_PREFETCH) is a hint: bitwise the same.
						plain := read(t, p.g, og)
						p.g.SetGQPrefetch(true)
						if err := p.g.Write(og, poison); err != nil {
							t.Fatal(err)
						}
						p.g.Attention(og, qg, 0, ap)
						p.g.SetGQPrefetch(false)
						for j, v := range read(t, p.g, og) {
							if math.Float32bits(v) != math.Float32bits(plain[j]) {
								t.Fatalf("deep %v, floor %d, split rule %s: element %d is %v with the values prefetched, %v without", deep, gd.floor, rule, j, v, plain[j])
							}
						}
					}
				}

				// The context rule, row by row alone: bitwise what the batch gave each row.
				p.g.SetDecodeSplit(cuda.DecodeSplitContext)
				if err := p.g.Prepare(&dec); err != nil {
					t.Fatal(err)
				}
				p.g.Attention(og, qg, 0, ap)
				batch := make([]float32, n*qw)
				if err := p.g.Read(og, batch); err != nil {
					t.Fatal(err)
				}
				for i := range dec.Seqs {
					alone := model.Step{Tokens: dec.Tokens[i : i+1], Positions: dec.Positions[i : i+1], Slots: dec.Slots[i : i+1],
						Seqs: []model.SeqRows{{Start: 0, N: 1, Len: dec.Seqs[i].Len, Pages: dec.Seqs[i].Pages}}}
					if err := p.g.Prepare(&alone); err != nil {
						t.Fatal(err)
					}
					out := og.Slice(i, 1)
					if err := p.g.Write(out, poison[:qw]); err != nil {
						t.Fatal(err)
					}
					p.g.Attention(out, qg.Slice(i, 1), 0, ap)
					got := make([]float32, qw)
					if err := p.g.Read(out, got); err != nil {
						t.Fatal(err)
					}
					for j, v := range got {
						if math.Float32bits(v) != math.Float32bits(batch[i*qw+j]) {
							t.Fatalf("grouped %v, deep %v, context %d: element %d is %v alone, %v in the batch", grouped, deep, lens[i], j, v, batch[i*qw+j])
						}
					}
				}
				if err := p.g.Err(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// With every fused path on (RoPE + KV store, gate/up + SiLU, grouped LoRA, the context split
// rule) and GEMV products up to 8 rows, the engine-core fixture suite still matches the
// transformers/peft reference within the bf16 bound: every family (Qwen2's q/k/v biases,
// Qwen3's Q/K norms), base + four adapters in one mixed batch, prefill whole and chunked, decode
// steps replayed from CUDA graphs; and each case alone (batch-1 decode, where gate/up fuse
// whenever the row has no adapter on them). All of it with each programmatic dependent launch
// mode (on an sm_90+ device; below, every mode launches as PDLOff), and the norms of prompt
// chunks past the GEMV rows written in bf16 for their cuBLAS products (LORAPLEX_NORM_BF16).
func TestFusedFixturesCUDA(t *testing.T) {
	for _, pdl := range []cuda.PDL{cuda.PDLOff, cuda.PDLOn, cuda.PDLPrefetch} {
		t.Run("pdl="+pdl.String(), func(t *testing.T) {
			b := newGPU(t)
			b.SetFusedDecode(true)
			b.SetLoRAGroup(true)
			b.SetNormGEMV(true)
			b.SetNormBF16(true)
			b.SetDecodeSplit(cuda.DecodeSplitContext)
			b.SetGEMVRows(8)
			b.SetPDL(pdl)
			for _, name := range fixture.Models {
				t.Run(name, func(t *testing.T) {
					fx, cfg, h := fixture.Open(t, name, b)
					adapters := fixtureadapters.Upload(t, name, cfg, b)
					runChunkings(t, h, fx.Cases, adapters, name)
					for i, c := range fx.Cases {
						if _, err := h.Run([]fixture.Case{c}, adapters, 1<<20, bf16Tolerance); err != nil {
							t.Fatalf("case %d alone: %v", i, err)
						}
					}
					if err := b.Err(); err != nil {
						t.Fatal(err)
					}
				})
			}
			if b.GraphCount() == 0 {
				t.Fatal("no decode step was recorded as a CUDA graph")
			}
		})
	}
}

// A recorded decode step replays only for steps of the same attention grid depth wherever the
// depth follows the step's contexts: one sequence decoding across 128 and 256 positions gives
// bitwise the logits of direct launches with graphs on, and each depth gets a recording of its
// own, under the context split rule (1, 2, then 3 splits) and in deterministic mode, which takes
// that rule whatever the switch says.
func TestContextSplitGraphsMatchDirect(t *testing.T) {
	const name, steps = "llama", 300
	for _, mode := range []struct {
		name   string
		set    func(b *cuda.Backend)
		graphs int
	}{
		{"context", func(b *cuda.Backend) { b.SetDecodeSplit(cuda.DecodeSplitContext) }, 3},
		{"deterministic", func(b *cuda.Backend) { b.SetDecodeSplit(cuda.DecodeSplitFill); b.SetBatchInvariant(true) }, 3},
	} {
		t.Run(mode.name, func(t *testing.T) {
			var logits [2][][]float32
			graphs := 0
			for i, on := range []bool{false, true} {
				b := newGPU(t)
				b.SetGraphs(on)
				b.SetFusedDecode(true)
				b.SetNormGEMV(true)
				mode.set(b)
				_, w, step := oneSequence(t, b, fixture.Dir(name), steps, 8)
				decode := func(pos int) []float32 { return step(pos, 1) }
				// One unrecorded step at the longest context first sizes the split scratch for every
				// depth, so that no growth drops the recordings below (which would hide a replay of the
				// wrong depth). Its logits read unwritten cache positions and are not compared.
				b.SetGraphs(false)
				decode(steps - 1)
				b.SetGraphs(on)
				for pos := 0; pos < steps; pos++ {
					logits[i] = append(logits[i], decode(pos))
				}
				if on {
					graphs = b.GraphCount()
				}
				w.Close()
			}
			for pos := range logits[0] {
				for j, v := range logits[0][pos] {
					if math.Float32bits(v) != math.Float32bits(logits[1][pos][j]) {
						t.Fatalf("position %d: logit %d is %v direct, %v replayed", pos, j, v, logits[1][pos][j])
					}
				}
			}
			if graphs != mode.graphs {
				t.Fatalf("%d recordings for decode steps of %d grid depths, want one each", graphs, mode.graphs)
			}
		})
	}
}

// The shared-input GEMV computes each part's product as its own GEMV does: against the CPU
// within fp32 rounding, against separate GEMV launches within 1e-6 (expected bit for bit), for
// q/k/v-like triples, gate/up-like pairs and single products, 1 to 8 rows, widths that leave
// blocks straddling two parts; with fusion off it declines those; beyond the GEMV kernel's rows
// it converts x once and each product is bitwise what MatMul gives through cuBLAS.
func TestFusedMatMulShared(t *testing.T) {
	r := rand.New(rand.NewPCG(29, 30))
	type shape struct {
		n, k   int
		widths []int
	}
	for _, sh := range []shape{{1, 4096, []int{4096, 1024, 1024}}, {3, 512, []int{384, 100, 100}}, {8, 160, []int{96, 13, 7}},
		{2, 2048, []int{1000, 1000}}, {5, 64, []int{33}}, {1, 8, []int{1, 2, 3}}} {
		t.Run(fmt.Sprintf("n%d_k%d_%v", sh.n, sh.k, sh.widths), func(t *testing.T) {
			tr := newTrio(t)
			tr.plain.SetGEMVRows(8)
			tr.fused.SetGEMVRows(8)
			x := tr.tensors(t, sh.n, sh.k, randFloats(r, sh.n*sh.k))
			ws, outs := make([][3]model.Tensor, len(sh.widths)), make([][3]model.Tensor, len(sh.widths))
			for i, m := range sh.widths {
				ws[i] = tr.uploads(t, hostBF16(r, m, sh.k, 1/math.Sqrt(float64(sh.k))))
				outs[i] = tr.tensors(t, sh.n, m, nil)
			}
			pick := func(bi int) ([]model.Tensor, []model.Tensor) {
				o, w := make([]model.Tensor, len(ws)), make([]model.Tensor, len(ws))
				for i := range ws {
					o[i], w[i] = outs[i][bi], ws[i][bi]
				}
				return o, w
			}
			for bi, b := range []model.Backend{tr.c, tr.plain} {
				o, w := pick(bi)
				for i := range o {
					b.MatMul(o[i], x[bi], w[i])
				}
			}
			if o, w := pick(1); tr.plain.MatMulShared(o, x[1], w) {
				t.Fatal("MatMulShared ran with fusion switched off")
			}
			o, w := pick(2)
			if !tr.fused.MatMulShared(o, x[2], w) {
				t.Fatal("MatMulShared declined GEMV-sized products with fusion on")
			}
			for i := range outs {
				same, all := tr.check(t, fmt.Sprintf("part %d", i), outs[i], 1e-4, 1e-6)
				t.Logf("part %d: %d of %d elements bitwise equal to its own GEMV", i, same, all)
			}
			// Beyond the GEMV rows: one bf16 conversion for every cuBLAS product, each bitwise
			// MatMul's (fusion on or off), against the CPU within the bf16 bound of products.
			for bi, b := range []*cuda.Backend{tr.plain, tr.fused} {
				b.SetGEMVRows(sh.n - 1)
				o, w := pick(bi + 1)
				if !b.MatMulShared(o, x[bi+1], w) {
					t.Fatalf("MatMulShared declined %d rows for cuBLAS with the GEMV limit at %d", sh.n, sh.n-1)
				}
			}
			mine := make([][]float32, len(outs))
			for i := range outs {
				mine[i] = read(t, tr.fused, outs[i][2])
				tr.plain.MatMul(outs[i][1], x[1], ws[i][1])
			}
			for i := range outs {
				tr.check(t, fmt.Sprintf("part %d through cuBLAS", i), outs[i], 2e-2, 1e-6)
				for j, v := range read(t, tr.plain, outs[i][1]) {
					if math.Float32bits(v) != math.Float32bits(mine[i][j]) {
						t.Fatalf("part %d through cuBLAS: element %d is %v shared, %v from MatMul", i, j, mine[i][j], v)
					}
				}
			}
			if err := tr.fused.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// normWeight is a random RMSNorm weight around 1 (a 1-D tensor: Upload keeps it in fp32).
func normWeight(r *rand.Rand, k int) model.HostTensor {
	data := make([]byte, 4*k)
	for i := 0; i < k; i++ {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(float32(1+0.3*r.NormFloat64())))
	}
	return model.HostTensor{Name: "norm", DType: model.F32, Shape: []int{k}, Data: data}
}

// The norm-fused GEMVs compute what the RMSNorm (after the residual add, when there is one)
// followed by the GEMVs computes: the products against the CPU within the bf16 products' 1e-4
// and against the unfused GPU ops (lp_add_rmsnorm or lp_rmsnorm, then the parts GEMV or the
// SwiGLU GEMV) within 1e-5 of the largest value (kernels/gemv.cu's bound: the 1/rms factor is
// applied after the product and the sum of squares is reduced in another order); the new
// residual written to next is bitwise the unfused x += delta, and x and delta are left as they
// were; q/k/v-like triples, gate/up pairs and single products, 1 to 8 rows, widths that leave
// blocks straddling two parts, with and without the add, each one-row case also staged
// (SetNormStage: the same bounds; widths up to the widest it stages, its prologue looping). They decline with the switch off, beyond the
// GEMV rows and in deterministic mode.
func TestNormGEMV(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	const eps = 1e-5
	type shape struct {
		n, k   int
		widths []int // q/k/v-like parts; gate/up when swiglu
		swiglu bool
	}
	for _, sh := range []shape{{1, 4096, []int{4096, 1024, 1024}, false}, {3, 512, []int{384, 100, 100}, false},
		{8, 160, []int{96, 13, 7}, false}, {2, 2048, []int{1000, 1000}, false}, {5, 64, []int{33}, false}, {1, 8, []int{1, 2, 3}, false},
		{1, 4096, []int{14336}, true}, {1, 64, []int{64}, true}, {2, 160, []int{96}, true}, {8, 1024, []int{520}, true}, {3, 8, []int{5}, true},
		{1, 8192, []int{256, 64, 64}, false}, {1, 12256, []int{72}, true}} {
		for _, c := range []struct{ add, stage bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
			if c.stage && sh.n > 1 {
				continue // staging is for one row: the cases above already cover these
			}
			add := c.add
			t.Run(fmt.Sprintf("n%d_k%d_%v_swiglu%v_add%v_stage%v", sh.n, sh.k, sh.widths, sh.swiglu, add, c.stage), func(t *testing.T) {
				tr := newTrio(t)
				for _, b := range []*cuda.Backend{tr.plain, tr.fused} {
					b.SetGEMVRows(8)
				}
				tr.plain.SetNormGEMV(false)
				tr.fused.SetNormGEMV(true)
				tr.fused.SetNormStage(c.stage)
				xv, dv := randFloats(r, sh.n*sh.k), randFloats(r, sh.n*sh.k)
				x, delta, next := tr.tensors(t, sh.n, sh.k, xv), tr.tensors(t, sh.n, sh.k, dv), tr.tensors(t, sh.n, sh.k, nil)
				h := tr.tensors(t, sh.n, sh.k, nil)
				var nw [3]model.Tensor
				nwHost := normWeight(r, sh.k)
				for i, b := range []model.Backend{tr.c, tr.plain, tr.fused} {
					var err error
					if nw[i], err = b.Upload(nwHost, 1, sh.k); err != nil {
						t.Fatal(err)
					}
				}
				ws, outs := make([][3]model.Tensor, 0, 3), make([][3]model.Tensor, 0, 3)
				for _, m := range sh.widths {
					parts := 1
					if sh.swiglu {
						parts = 2 // gate and up
					}
					for range parts {
						ws = append(ws, tr.uploads(t, hostBF16(r, m, sh.k, 1/math.Sqrt(float64(sh.k)))))
						outs = append(outs, tr.tensors(t, sh.n, m, nil))
					}
				}
				pick := func(bi int) ([]model.Tensor, []model.Tensor) {
					o, w := make([]model.Tensor, len(ws)), make([]model.Tensor, len(ws))
					for i := range ws {
						o[i], w[i] = outs[i][bi], ws[i][bi]
					}
					return o, w
				}
				in := func(bi int) model.NormedInput {
					ni := model.NormedInput{X: x[bi], Next: next[bi], Weight: nw[bi], Eps: eps}
					if add {
						ni.Delta = delta[bi]
					}
					return ni
				}
				act := tr.tensors(t, sh.n, sh.widths[0], nil)
				fusedCall := func(b *cuda.Backend, bi int) bool {
					o, w := pick(bi)
					if sh.swiglu {
						return b.NormGateUpSiLU(act[bi], in(bi), w[0], w[1])
					}
					return b.NormMatMulShared(o, in(bi), w)
				}
				// The unfused ops on the CPU and on the GPU with the switch off.
				for bi, b := range []model.Backend{tr.c, tr.plain} {
					if add {
						b.AddRMSNorm(x[bi], delta[bi], h[bi], nw[bi], eps)
					} else {
						b.RMSNorm(h[bi], x[bi], nw[bi], eps)
					}
					o, w := pick(bi)
					for i := range o {
						b.MatMul(o[i], h[bi], w[i])
					}
					if sh.swiglu {
						b.SiluMul(act[bi], o[0], o[1])
					}
				}
				if fusedCall(tr.plain, 1) {
					t.Fatal("the norm-fused GEMV ran with its switch off")
				}
				if !fusedCall(tr.fused, 2) {
					t.Fatal("the norm-fused GEMV declined a GEMV-sized product with its switch on")
				}
				if sh.swiglu {
					same, all := tr.check(t, "act", act, 1e-4, 1e-5)
					t.Logf("act: %d of %d elements bitwise equal to the unfused path", same, all)
				} else {
					for i := range outs {
						same, all := tr.check(t, fmt.Sprintf("part %d", i), outs[i], 1e-4, 1e-5)
						t.Logf("part %d: %d of %d elements bitwise equal to the unfused path", i, same, all)
					}
				}
				if add {
					// The new residual: the unfused path's x after x += delta, bit for bit.
					if same, all := tr.check(t, "residual", [3]model.Tensor{x[0], x[1], next[2]}, 0, 0); same != all {
						t.Fatalf("residual: %d of %d elements bitwise the unfused x += delta", same, all)
					}
				}
				for _, c := range []struct {
					what string
					t    model.Tensor
					was  []float32
				}{{"x", x[2], xv}, {"delta", delta[2], dv}} {
					for i, v := range read(t, tr.fused, c.t) {
						if math.Float32bits(v) != math.Float32bits(c.was[i]) {
							t.Fatalf("%s[%d] was written: %v, was %v", c.what, i, v, c.was[i])
						}
					}
				}

				// Declines: more rows than the GEMV kernel takes here (with the bf16 norm for
				// cuBLAS off: on, NormMatMulShared takes them there, which TestNormBF16 checks),
				// and deterministic mode.
				tr.fused.SetGEMVRows(sh.n - 1)
				tr.fused.SetNormBF16(false)
				if fusedCall(tr.fused, 2) {
					t.Fatalf("the norm-fused GEMV took %d rows with the GEMV limit at %d", sh.n, sh.n-1)
				}
				tr.fused.SetNormBF16(true)
				if took := fusedCall(tr.fused, 2); took != !sh.swiglu {
					t.Fatalf("with the bf16 norm on, %d rows past the GEMV limit: taken %v (gate/up + SwiGLU %v)", sh.n, took, sh.swiglu)
				}
				tr.fused.SetNormBF16(false)
				tr.fused.SetGEMVRows(8)
				tr.fused.SetBatchInvariant(true)
				if fusedCall(tr.fused, 2) {
					t.Fatal("the norm-fused GEMV ran in deterministic mode")
				}
				tr.fused.SetBatchInvariant(false)
				if err := tr.fused.Err(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// SwiGLU with the down projection in one call (SiLUMulMatMul) gives bitwise the activation and
// the product of SiluMul then MatMul: the activation kernel's bf16 copy is the conversion pass's
// rounding. Row counts from just past the GEMV rows to a prefill chunk, widths whose element
// count leaves the four-wide kernel (n·k % 4 != 0: the one-wide kernel) and odd k; every output
// is poisoned with NaN first. It declines GEMV-sized steps, deterministic mode and the switch off.
func TestSiLUMulMatMul(t *testing.T) {
	g := newGPU(t)
	r := rand.New(rand.NewPCG(61, 62))
	for _, sh := range []struct{ n, k, m int }{{2, 14336, 4096}, {9, 344, 64}, {64, 1024, 256}, {300, 2048, 512}, {7, 35, 16}} {
		t.Run(fmt.Sprintf("n%d_k%d_m%d", sh.n, sh.k, sh.m), func(t *testing.T) {
			gate, up := g.Alloc(sh.n, sh.k), g.Alloc(sh.n, sh.k)
			act1, act2 := g.Alloc(sh.n, sh.k), g.Alloc(sh.n, sh.k)
			out1, out2 := g.Alloc(sh.n, sh.m), g.Alloc(sh.n, sh.m)
			w, err := g.Upload(hostBF16(r, sh.m, sh.k, 1/math.Sqrt(float64(sh.k))), sh.m, sh.k)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range []model.Tensor{gate, up} {
				v := randFloats(r, sh.n*sh.k)
				for i := range v {
					v[i] *= 3
				}
				if err := g.Write(x, v); err != nil {
					t.Fatal(err)
				}
			}
			for _, x := range []model.Tensor{act1, act2, out1, out2} {
				if err := g.Write(x, nanFloats(x.Rows*x.Cols)); err != nil {
					t.Fatal(err)
				}
			}
			g.SiluMul(act1, gate, up)
			g.MatMul(out1, act1, w)
			if !g.SiLUMulMatMul([]model.Tensor{out2}, act2, gate, up, []model.Tensor{w}) {
				t.Fatalf("declined %d rows (GEMV rows 1)", sh.n)
			}
			for _, pair := range [][2]model.Tensor{{act1, act2}, {out1, out2}} {
				want, got := read(t, g, pair[0]), read(t, g, pair[1])
				for i := range want {
					if math.Float32bits(want[i]) != math.Float32bits(got[i]) || math.IsNaN(float64(got[i])) {
						t.Fatalf("element %d of [%d, %d]: %v in one call, %v from SiluMul then MatMul", i, pair[0].Rows, pair[0].Cols, got[i], want[i])
					}
				}
			}
			for _, x := range []model.Tensor{gate, up, act1, act2, out1, out2, w} {
				g.Free(x)
			}
		})
	}
	gate, up, act := g.Alloc(16, 64), g.Alloc(16, 64), g.Alloc(16, 64)
	out := g.Alloc(16, 32)
	w, err := g.Upload(hostBF16(r, 32, 64, 0.1), 32, 64)
	if err != nil {
		t.Fatal(err)
	}
	g.SetGEMVRows(8)
	ws := []model.Tensor{w}
	if g.SiLUMulMatMul([]model.Tensor{out.Slice(0, 8)}, act.Slice(0, 8), gate.Slice(0, 8), up.Slice(0, 8), ws) {
		t.Error("took 8 rows, which the GEMV kernel reads in fp32")
	}
	outs := []model.Tensor{out}
	g.SetSwiGLUBF16(false)
	if g.SiLUMulMatMul(outs, act, gate, up, ws) {
		t.Error("ran with LORAPLEX_SWIGLU_BF16 off")
	}
	g.SetSwiGLUBF16(true)
	g.SetBatchInvariant(true)
	if g.SiLUMulMatMul(outs, act, gate, up, ws) {
		t.Error("ran in deterministic mode")
	}
	g.SetBatchInvariant(false)
	if !g.SiLUMulMatMul(outs, act, gate, up, ws) {
		t.Error("declined 16 rows with the switch back on")
	}
	if err := g.Err(); err != nil {
		t.Fatal(err)
	}
}

// A routed step's SwiGLU call also makes the down gate's product (28 outputs) beside the down
// projection's, bitwise what SiluMul then MatMulShared give, every output written; only with
// LORAPLEX_ROUTED_BF16 on (one product is the plain steps' call either way).
func TestSiLUMulMatMulRouted(t *testing.T) {
	g := newGPU(t)
	defer g.SetRoutedBF16(false)
	r := rand.New(rand.NewPCG(63, 64))
	const n, k, m, experts = 64, 1024, 256, 28
	gate, up := g.Alloc(n, k), g.Alloc(n, k)
	act1, act2 := g.Alloc(n, k), g.Alloc(n, k)
	outs1, outs2 := []model.Tensor{g.Alloc(n, m), g.Alloc(n, experts)}, []model.Tensor{g.Alloc(n, m), g.Alloc(n, experts)}
	var ws []model.Tensor
	for _, rows := range []int{m, experts} {
		w, err := g.Upload(hostBF16(r, rows, k, 1/math.Sqrt(k)), rows, k)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	defer func() {
		for _, x := range append(append(append([]model.Tensor{gate, up, act1, act2}, outs1...), outs2...), ws...) {
			g.Free(x)
		}
	}()
	for _, x := range []model.Tensor{gate, up} {
		if err := g.Write(x, randFloats(r, n*k)); err != nil {
			t.Fatal(err)
		}
	}
	for _, x := range append(append([]model.Tensor{act1, act2}, outs1...), outs2...) {
		if err := g.Write(x, nanFloats(x.Rows*x.Cols)); err != nil {
			t.Fatal(err)
		}
	}
	g.SetRoutedBF16(false)
	if g.SiLUMulMatMul(outs2, act2, gate, up, ws) {
		t.Fatal("took a routed step's two products with LORAPLEX_ROUTED_BF16 off")
	}
	g.SetRoutedBF16(true)
	if !g.SiLUMulMatMul(outs2, act2, gate, up, ws) {
		t.Fatal("declined a routed step's two products at 64 rows")
	}
	g.SiluMul(act1, gate, up)
	if !g.MatMulShared(outs1, act1, ws) {
		t.Fatal("MatMulShared declined 64 rows")
	}
	for i, pair := range [][2]model.Tensor{{act1, act2}, {outs1[0], outs2[0]}, {outs1[1], outs2[1]}} {
		want, got := read(t, g, pair[0]), read(t, g, pair[1])
		for j := range want {
			if math.Float32bits(want[j]) != math.Float32bits(got[j]) || math.IsNaN(float64(got[j])) {
				t.Fatalf("output %d element %d: %v in one call, %v from SiluMul then MatMulShared", i, j, got[j], want[j])
			}
		}
	}
	if err := g.Err(); err != nil {
		t.Fatal(err)
	}
}

// normCase is one case of products fused with the (add +) RMSNorm before them, on the GPU: the
// input twice (x1 for the unfused ops, which add the residual into it; x2 for the fused call,
// which must leave it alone), delta and next with the residual add, the normed state h the
// unfused ops write, the weights of products of the given widths and both sides' outputs, every
// output poisoned with NaN first. Everything it allocates is freed when the test ends.
type normCase struct {
	g                             *cuda.Backend
	n, k                          int
	xv                            []float32
	x1, x2, delta, next, h, normW model.Tensor
	ws, want, got                 []model.Tensor
}

func newNormCase(t *testing.T, g *cuda.Backend, r *rand.Rand, n, k int, widths []int, add bool) *normCase {
	c := &normCase{g: g, n: n, k: k, xv: randFloats(r, n*k)}
	c.x1, c.x2 = c.alloc(t, n, k, c.xv), c.alloc(t, n, k, c.xv)
	c.normW = c.alloc(t, 1, k, randFloats(r, k))
	if add {
		c.delta, c.next = c.alloc(t, n, k, randFloats(r, n*k)), c.alloc(t, n, k, nil)
	}
	c.h = c.alloc(t, n, k, nil)
	for _, m := range widths {
		c.ws = append(c.ws, c.upload(t, hostBF16(r, m, k, 1/math.Sqrt(float64(k)))))
		c.want, c.got = append(c.want, c.alloc(t, n, m, nil)), append(c.got, c.alloc(t, n, m, nil))
	}
	return c
}

// alloc makes a tensor holding vals (NaN where vals is nil).
func (c *normCase) alloc(t *testing.T, rows, cols int, vals []float32) model.Tensor {
	x := c.g.Alloc(rows, cols)
	t.Cleanup(func() { c.g.Free(x) })
	if vals == nil {
		vals = nanFloats(rows * cols)
	}
	if err := c.g.Write(x, vals); err != nil {
		t.Fatal(err)
	}
	return x
}

func (c *normCase) upload(t *testing.T, h model.HostTensor) model.Tensor {
	x, err := c.g.Upload(h, h.Shape[0], h.Shape[1])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.g.Free(x) })
	return x
}

// norm runs the unfused norm into h (the residual sum landing in x1).
func (c *normCase) norm(eps float32) {
	if c.delta.Rows > 0 {
		c.g.AddRMSNorm(c.x1, c.delta, c.h, c.normW, eps)
	} else {
		c.g.RMSNorm(c.h, c.x1, c.normW, eps)
	}
}

// input is the fused call's NormedInput.
func (c *normCase) input(eps float32) model.NormedInput {
	return model.NormedInput{X: c.x2, Delta: c.delta, Next: c.next, Weight: c.normW, Eps: eps}
}

// checkBitwise fails unless every fused output (side names it) is bitwise the unfused one and
// not NaN, the fused residual in next is bitwise the unfused x1, and x2 is as it was.
func (c *normCase) checkBitwise(t *testing.T, side string) {
	t.Helper()
	same := func(what string, a, b model.Tensor) {
		av, bv := read(t, c.g, a), read(t, c.g, b)
		for i := range av {
			if math.Float32bits(av[i]) != math.Float32bits(bv[i]) || math.IsNaN(float64(bv[i])) {
				t.Fatalf("%s: element %d is %v %s, %v unfused", what, i, bv[i], side, av[i])
			}
		}
	}
	for i := range c.ws {
		same(fmt.Sprintf("product %d", i), c.want[i], c.got[i])
	}
	if c.delta.Rows > 0 {
		same("residual in Next", c.x1, c.next)
		for i, v := range read(t, c.g, c.x2) {
			if math.Float32bits(v) != math.Float32bits(c.xv[i]) {
				t.Fatalf("x changed at %d: %v, was %v", i, v, c.xv[i])
			}
		}
	}
}

// With LORAPLEX_NORM_BF16 the norm (and the residual add) folded into products that run on
// cuBLAS gives bitwise the unfused AddRMSNorm (RMSNorm) then MatMulShared: each product, and the
// residual sum in in.Next with in.X left as it was; for q/k/v-like triples and gate/up-like pairs,
// 2 to 300 rows, with and without the residual add, every output poisoned with NaN first. It
// takes nothing to cuBLAS with the switch off or in deterministic mode.
func TestNormBF16(t *testing.T) {
	g := newGPU(t)
	g.SetNormBF16(true)
	r := rand.New(rand.NewPCG(71, 72))
	for _, sh := range []struct {
		n, k   int
		widths []int
		add    bool
	}{{2, 4096, []int{4096, 1024, 1024}, true}, {64, 512, []int{384, 100, 100}, true}, {300, 1024, []int{2048, 2048}, true},
		{9, 256, []int{96, 13, 7}, false}, {33, 4096, []int{14336, 14336}, false}} {
		t.Run(fmt.Sprintf("n%d_k%d_%v_add%v", sh.n, sh.k, sh.widths, sh.add), func(t *testing.T) {
			c := newNormCase(t, g, r, sh.n, sh.k, sh.widths, sh.add)
			c.norm(1e-5)
			if !g.MatMulShared(c.want, c.h, c.ws) {
				for i := range c.ws {
					g.MatMul(c.want[i], c.h, c.ws[i])
				}
			}
			if !g.NormMatMulShared(c.got, c.input(1e-5), c.ws) {
				t.Fatalf("declined %d rows for cuBLAS", sh.n)
			}
			c.checkBitwise(t, "folded")
		})
	}
	x, normW, out := g.Alloc(16, 64), g.Alloc(1, 64), g.Alloc(16, 32)
	w, err := g.Upload(hostBF16(r, 32, 64, 0.1), 32, 64)
	if err != nil {
		t.Fatal(err)
	}
	in := model.NormedInput{X: x, Weight: normW, Eps: 1e-5}
	g.SetBatchInvariant(true)
	if g.NormMatMulShared([]model.Tensor{out}, in, []model.Tensor{w}) {
		t.Error("took 16 rows in deterministic mode")
	}
	g.SetBatchInvariant(false)
	g.SetNormBF16(false)
	g.SetGEMVRows(1)
	if g.NormMatMulShared([]model.Tensor{out}, in, []model.Tensor{w}) {
		t.Error("took 16 rows with LORAPLEX_NORM_BF16 off")
	}
	if err := g.Err(); err != nil {
		t.Fatal(err)
	}
}
