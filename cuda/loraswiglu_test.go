//go:build cuda

package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

// The LoRA SwiGLU (LORAPLEX_LORA_SWIGLU) gives what the unfused path gives: the (add +) RMSNorm,
// the gate and up products, their LoRA deltas (LoRAGroup), then SwiGLU with the down product
// (SiLUMulMatMul): the activation and the down product within 1e-5 and 1e-3 of their largest
// values (the same arithmetic, unless the compiler contracts value + scale · delta into an FMA
// in one kernel and not the other; the test logs how many are bitwise), the residual in Next
// bitwise and x left alone. Layouts: row runs of adapters of ranks 8, 16 and 4 (the expand's
// scalar path) with unadapted runs between them, an adapter on gate alone, one segment over
// every row; the Llama-3-8B widths, a width off multiples of 4. It declines in deterministic
// mode, with the switch off, with the wide LoRA kernels or SwiGLU's bf16 copy off, and for rows
// the GEMV takes.
func TestLoRASwiGLU(t *testing.T) {
	g := newGPU(t)
	g.SetNormBF16(true)
	g.SetLoRASwiGLU(true)
	r := rand.New(rand.NewPCG(91, 92))
	const eps = 1e-5
	for _, sh := range []struct {
		n, k, inter int
		layout      string // "runs", "gate" (gate's segments only), "one" (one segment over every row)
		add         bool
	}{{64, 4096, 14336, "runs", true}, {3, 512, 1024, "gate", true}, {300, 1024, 2048, "one", false}, {9, 256, 344, "runs", true}} {
		t.Run(fmt.Sprintf("n%d_k%d_i%d_%s_add%v", sh.n, sh.k, sh.inter, sh.layout, sh.add), func(t *testing.T) {
			c := newNormCase(t, g, r, sh.n, sh.k, nil, sh.add)
			wGate := c.upload(t, hostBF16(r, sh.inter, sh.k, 1/math.Sqrt(float64(sh.k))))
			wUp := c.upload(t, hostBF16(r, sh.inter, sh.k, 1/math.Sqrt(float64(sh.k))))
			wDown := c.upload(t, hostBF16(r, sh.k, sh.inter, 1/math.Sqrt(float64(sh.inter))))
			var gate, up, act, out [2]model.Tensor // unfused, fused
			for i := range gate {
				gate[i], up[i], act[i] = c.alloc(t, sh.n, sh.inter, nil), c.alloc(t, sh.n, sh.inter, nil), c.alloc(t, sh.n, sh.inter, nil)
				out[i] = c.alloc(t, sh.n, sh.k, nil)
			}
			ranks := []int{8, 16, 4}
			var segs [2][]model.LoRASeg
			for start := 0; start < sh.n; {
				run, a := 1+r.IntN(8), r.IntN(len(ranks)+1)
				if sh.layout == "one" {
					run, a = sh.n, 1
				}
				run = min(run, sh.n-start)
				for p := range segs {
					if a < len(ranks) && (p == 0 || sh.layout != "gate") {
						rk := ranks[a]
						segs[p] = append(segs[p], model.LoRASeg{Start: start, N: run, A: c.upload(t, hostBF16(r, rk, sh.k, 1/math.Sqrt(float64(sh.k)))),
							B: c.upload(t, hostBF16(r, sh.inter, rk, 1/math.Sqrt(float64(rk)))), Scale: float32(0.5 + r.Float64())})
					}
				}
				start += run
			}
			if len(segs[0]) == 0 { // every run drew "no adapter": give the first row one
				segs[0] = append(segs[0], model.LoRASeg{Start: 0, N: 1, A: c.upload(t, hostBF16(r, 8, sh.k, 0.05)),
					B: c.upload(t, hostBF16(r, sh.inter, 8, 0.3)), Scale: 1})
			}
			// The unfused path.
			c.norm(eps)
			if !g.MatMulShared([]model.Tensor{gate[0], up[0]}, c.h, []model.Tensor{wGate, wUp}) {
				t.Fatal("MatMulShared declined rows for cuBLAS")
			}
			if !g.LoRAGroup([]model.Tensor{gate[0], up[0]}, c.h, segs[:]) {
				t.Fatal("LoRAGroup declined")
			}
			if !g.SiLUMulMatMul(out[0], act[0], gate[0], up[0], wDown) {
				t.Fatal("SiLUMulMatMul declined")
			}
			in := c.input(eps)
			before := g.LoRASwiGLUCount()
			if !g.NormGateUpLoRASwiGLU(out[1], act[1], gate[1], up[1], in, wGate, wUp, wDown, segs) || g.LoRASwiGLUCount() != before+1 {
				t.Fatalf("declined %d rows (calls %d, was %d)", sh.n, g.LoRASwiGLUCount(), before)
			}
			for _, v := range []struct {
				what  string
				a, b  model.Tensor
				bound float64
			}{{"activation", act[0], act[1], 1e-5}, {"down product", out[0], out[1], 1e-3}} {
				want, got := read(t, g, v.a), read(t, g, v.b)
				top, worst, same := 0.0, 0.0, 0
				for i := range want {
					top = max(top, math.Abs(float64(want[i])))
					if math.IsNaN(float64(got[i])) {
						t.Fatalf("%s: element %d is NaN", v.what, i)
					}
					worst = max(worst, math.Abs(float64(got[i]-want[i])))
					if math.Float32bits(got[i]) == math.Float32bits(want[i]) {
						same++
					}
				}
				t.Logf("%s: %d of %d elements bitwise the unfused path's, worst difference %.3g of the largest %.3g", v.what, same, len(want), worst, top)
				if worst > v.bound*top {
					t.Fatalf("%s: worst difference %.3g beyond %.0e of the largest value %.3g", v.what, worst, v.bound, top)
				}
			}
			c.checkBitwise(t, "fused") // the residual and x
			for _, off := range []struct {
				what     string
				set, rst func()
			}{
				{"deterministic mode", func() { g.SetBatchInvariant(true) }, func() { g.SetBatchInvariant(false) }},
				{"the switch off", func() { g.SetLoRASwiGLU(false) }, func() { g.SetLoRASwiGLU(true) }},
				{"the wide LoRA kernels off", func() { g.SetLoRAWide(false) }, func() { g.SetLoRAWide(true) }},
				{"SwiGLU's bf16 copy off", func() { g.SetSwiGLUBF16(false) }, func() { g.SetSwiGLUBF16(true) }},
				{"rows the GEMV takes", func() { g.SetGEMVRows(sh.n) }, func() { g.SetGEMVRows(1) }},
			} {
				if off.what == "rows the GEMV takes" && sh.n > 8 { // LP_GEMV_MAX_ROWS
					continue
				}
				off.set()
				if g.NormGateUpLoRASwiGLU(out[1], act[1], gate[1], up[1], in, wGate, wUp, wDown, segs) {
					t.Errorf("took %d rows with %s", sh.n, off.what)
				}
				off.rst()
			}
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// With the LoRA SwiGLU the engine-core fixture suite still matches the transformers/peft
// reference within the bf16 bound (every family, base + four adapters in one mixed batch,
// prefill whole and chunked, decode replayed from CUDA graphs), and its adapted steps of more
// than one row take it.
func TestLoRASwiGLUFixturesCUDA(t *testing.T) {
	b := newGPU(t)
	b.SetNormBF16(true)
	b.SetLoRASwiGLU(true)
	for _, name := range fixture.Models {
		t.Run(name, func(t *testing.T) {
			fx, cfg, h := fixture.Open(t, name, b)
			runChunkings(t, h, fx.Cases, fixtureadapters.Upload(t, name, cfg, b), name)
			if err := b.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
	if b.LoRASwiGLUCount() == 0 || b.GraphCount() == 0 {
		t.Fatalf("%d LoRA SwiGLU calls, %d recordings", b.LoRASwiGLUCount(), b.GraphCount())
	}
}
