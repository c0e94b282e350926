package cpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// The page kernels agree with their portable versions for every head size around the 8-, 16-,
// 32- and 64-wide blocks, every key count around the four-key pass, and strided rows.
func TestAttentionKernelsMatchGeneric(t *testing.T) {
	r := rand.New(rand.NewPCG(14, 6))
	for _, d := range []int{1, 4, 8, 16, 24, 32, 40, 48, 64, 72, 96, 128, 136} {
		for _, n := range []int{1, 3, 4, 5, 8, 15, 16, 17, 33} {
			stride := d + r.IntN(3)*8
			q, k := randF32(r, d), randF32(r, (n-1)*stride+d)
			got, want := make([]float32, n), make([]float32, n)
			scores(q, k, stride, 0.125, got)
			scoresGeneric(q, k, stride, 0.125, want)
			for i := range got {
				var mag float64
				for j := range q {
					mag += math.Abs(float64(q[j]) * float64(k[i*stride+j]))
				}
				checkClose(t, "scores", d, n, got[i], want[i], mag*0.125)
			}

			p := randF32(r, n)
			o := randF32(r, d)
			og, ow := append([]float32(nil), o...), append([]float32(nil), o...)
			accum(p, k, stride, og)
			accumGeneric(p, k, stride, ow)
			for i := range og {
				mag := math.Abs(float64(o[i]))
				for j := range p {
					mag += math.Abs(float64(p[j]) * float64(k[j*stride+i]))
				}
				checkClose(t, "accum", d, n, og[i], ow[i], mag)
			}
		}
	}
	for n := 1; n <= 70; n++ {
		x := randF32(r, n)
		if got, want := maxF32(x), maxGeneric(x); got != want {
			t.Errorf("maxF32 n=%d: %g, want %g", n, got, want)
		}
		m := maxGeneric(x)
		xg, xw := append([]float32(nil), x...), append([]float32(nil), x...)
		sg, sw := expSub(xg, m), expSubGeneric(xw, m)
		for i := range xg {
			if d := math.Abs(float64(xg[i]) - float64(xw[i])); d > 2e-7*math.Abs(float64(xw[i])) {
				t.Errorf("expSub n=%d [%d]: %g, want %g", n, i, xg[i], xw[i])
			}
		}
		checkClose(t, "expSub sum", n, 0, sg, sw, float64(sw))
	}
}

// expF32 is within 2 ulp of the correctly rounded exp over the range attention uses (x <= 0),
// and flushes to zero only below float32's normal range.
func TestExpF32(t *testing.T) {
	worst := 0.0
	for x := float32(-87); x <= 0; x += 0.00123 {
		got, want := float64(expF32(x)), math.Exp(float64(x))
		ulp := float64(math.Nextafter32(float32(want), 1)) - float64(float32(want))
		worst = max(worst, math.Abs(got-want)/ulp)
	}
	if worst > 2 {
		t.Errorf("expF32: worst error %.2f ulp, want <= 2", worst)
	}
	if expF32(0) != 1 || expF32(-200) > 1.2e-38 {
		t.Errorf("expF32(0) = %g, expF32(-200) = %g", expF32(0), expF32(-200))
	}
}

// attnCase is one Attention call on a random cache: every sequence's rows are its last N
// positions, pages shuffled over the cache.
type attnCase struct {
	heads, kvHeads, dim, pageSize, window int
	b                                     *Backend
	q                                     model.Tensor
}

func newAttnCase(r *rand.Rand, heads, kvHeads, dim, pageSize, window int, lens, rows []int) *attnCase {
	c := &attnCase{heads: heads, kvHeads: kvHeads, dim: dim, pageSize: pageSize, window: window, b: New(2)}
	pages := 0
	for _, l := range lens {
		pages += (l + pageSize - 1) / pageSize
	}
	if err := c.b.AllocKV(model.KVSpec{Layers: 1, Pages: pages, PageSize: pageSize, KVHeads: kvHeads, HeadDim: dim}); err != nil {
		panic(err)
	}
	for i := range c.b.kcache[0] {
		c.b.kcache[0][i], c.b.vcache[0][i] = float32(r.NormFloat64()), float32(r.NormFloat64())
	}
	perm := r.Perm(pages)
	s := &model.Step{}
	for i, l := range lens {
		sq := model.SeqRows{Start: len(s.Tokens), N: rows[i], Len: l}
		for range (l + pageSize - 1) / pageSize {
			sq.Pages = append(sq.Pages, int32(perm[0]))
			perm = perm[1:]
		}
		for p := l - rows[i]; p < l; p++ {
			s.Tokens = append(s.Tokens, 0)
			s.Positions = append(s.Positions, int32(p))
			s.Slots = append(s.Slots, sq.Pages[p/pageSize]*int32(pageSize)+int32(p%pageSize))
		}
		s.Seqs = append(s.Seqs, sq)
	}
	if err := c.b.Prepare(s); err != nil {
		panic(err)
	}
	c.q = c.b.Alloc(len(s.Tokens), heads*dim)
	for i := range f32(c.q) {
		f32(c.q)[i] = float32(r.NormFloat64())
	}
	return c
}

func (c *attnCase) params() model.AttnParams {
	return model.AttnParams{Heads: c.heads, KVHeads: c.kvHeads, HeadDim: c.dim, Scale: float32(1 / math.Sqrt(float64(c.dim))), Window: c.window}
}

// reference is attention in float64, straight from the definition.
func (c *attnCase) reference() []float64 {
	s, D := c.b.step, c.dim
	width, group := c.kvHeads*D, c.heads/c.kvHeads
	out := make([]float64, len(s.Tokens)*c.heads*D)
	for _, sq := range s.Seqs {
		for row := sq.Start; row < sq.Start+sq.N; row++ {
			pos := int(s.Positions[row])
			first := 0
			if c.window > 0 {
				first = max(0, pos-c.window+1)
			}
			for h := 0; h < c.heads; h++ {
				qv := f32(c.q)[(row*c.heads+h)*D:]
				koff := (h / group) * D
				sc := make([]float64, pos+1)
				m := math.Inf(-1)
				for t := first; t <= pos; t++ {
					slot := int(sq.Pages[t/c.pageSize])*c.pageSize + t%c.pageSize
					for i := 0; i < D; i++ {
						sc[t] += float64(qv[i]) * float64(c.b.kcache[0][slot*width+koff+i])
					}
					sc[t] /= math.Sqrt(float64(D))
					m = max(m, sc[t])
				}
				var z float64
				for t := first; t <= pos; t++ {
					sc[t] = math.Exp(sc[t] - m)
					z += sc[t]
				}
				for t := first; t <= pos; t++ {
					slot := int(sq.Pages[t/c.pageSize])*c.pageSize + t%c.pageSize
					for i := 0; i < D; i++ {
						out[(row*c.heads+h)*D+i] += sc[t] / z * float64(c.b.vcache[0][slot*width+koff+i])
					}
				}
			}
		}
	}
	return out
}

// Tiled attention equals attention from its definition (float64) to float32 rounding, for
// every GQA grouping, head size, page size, sliding window, row block boundary, and for steps
// that mix decode rows with prefill chunks of several sequences.
func TestAttentionMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(14, 7))
	type shape struct{ heads, kvHeads, dim, pageSize, window int }
	for _, sh := range []shape{{8, 4, 40, 16, 0}, {12, 4, 64, 16, 0}, {4, 4, 8, 3, 0}, {6, 2, 12, 5, 7}, {2, 1, 128, 16, 20}, {3, 1, 5, 1, 0}} {
		for _, layout := range [][2][]int{
			{{1}, {1}},                       // first token
			{{37}, {1}},                      // decode
			{{50}, {50}},                     // a whole prompt: 3 row blocks and a tail
			{{70}, {33}},                     // a later chunk
			{{16, 17, 90, 5}, {1, 1, 40, 5}}, // decode rows beside chunks
		} {
			c := newAttnCase(r, sh.heads, sh.kvHeads, sh.dim, sh.pageSize, sh.window, layout[0], layout[1])
			out := c.b.Alloc(c.q.Rows, c.q.Cols)
			c.b.Attention(out, c.q, 0, c.params())
			want := c.reference()
			for i, g := range f32(out) {
				if d := math.Abs(float64(g) - want[i]); d > 1e-5*(1+math.Abs(want[i])) {
					t.Fatalf("%+v lens %v rows %v: out[%d] = %g, want %g", sh, layout[0], layout[1], i, g, want[i])
				}
			}
			c.b.Close()
		}
	}
}

// A row's attention output is bit-for-bit the same whichever step computes it: alone as a
// decode row, or inside any prefill chunk (at any offset in its row block).
func TestAttentionRowIndependentOfChunk(t *testing.T) {
	r := rand.New(rand.NewPCG(14, 8))
	const heads, kvHeads, dim, pageSize, seqLen = 12, 4, 64, 16, 75
	big := newAttnCase(r, heads, kvHeads, dim, pageSize, 0, []int{seqLen}, []int{seqLen})
	defer big.b.Close()
	whole := big.b.Alloc(seqLen, heads*dim)
	big.b.Attention(whole, big.q, 0, big.params())
	for _, chunk := range []int{1, 7, 16, 29} {
		s := big.b.step
		for start := 0; start < seqLen; start += chunk {
			n := min(chunk, seqLen-start)
			sub := &model.Step{Tokens: s.Tokens[start : start+n], Positions: s.Positions[start : start+n], Slots: s.Slots[start : start+n],
				Seqs: []model.SeqRows{{Start: 0, N: n, Len: start + n, Pages: s.Seqs[0].Pages}}}
			if err := big.b.Prepare(sub); err != nil {
				t.Fatal(err)
			}
			out := big.b.Alloc(n, heads*dim)
			big.b.Attention(out, big.q.Slice(start, n), 0, big.params())
			for i, v := range f32(out) {
				if w := f32(whole)[start*heads*dim+i]; math.Float32bits(v) != math.Float32bits(w) {
					t.Fatalf("chunk %d: row %d differs: %g vs %g computed with the whole prompt", chunk, start+i/(heads*dim), v, w)
				}
			}
			big.b.step = s
		}
	}
}

// SiluMul's vector kernel agrees with its portable version and with silu(g)·u in float64 for
// every length around the 8-wide blocks, over gates from saturated negative to saturated positive.
func TestSiluMulKernel(t *testing.T) {
	r := rand.New(rand.NewPCG(14, 9))
	for n := 0; n <= 41; n++ {
		g, u := randF32(r, n), randF32(r, n)
		for i := range g {
			g[i] *= 30
		}
		got, want := make([]float32, n), make([]float32, n)
		siluMul(got, g, u)
		siluMulGeneric(want, g, u)
		for i := range got {
			def := float64(g[i]) / (1 + math.Exp(-float64(g[i]))) * float64(u[i])
			if math.Abs(float64(got[i])-float64(want[i])) > 2e-7*math.Abs(float64(want[i])) || math.Abs(float64(got[i])-def) > 1e-6*math.Abs(def)+1e-30 {
				t.Fatalf("n=%d [%d]: silu(%g)*%g = %g, portable %g, float64 %g", n, i, g[i], u[i], got[i], want[i], def)
			}
		}
	}
}
