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
	"github.com/loraplex/loraplex/internal/batchinv"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/serve"
)

// In deterministic mode a product's row is bitwise the same in every batch, on every product
// kernel (LORAPLEX_DETERMINISTIC_GEMM: rows, tensor-cores, tensor-cores-bf16x, cublas-padded,
// whose whole 64-row chunks go straight to the output and other chunks through its scratch,
// so that n = 64, 65, 100 and 130 compare both ways against rows alone): row i of an n-row MatMul equals the
// same row computed alone, for batch sizes around the rows kernel's 8-row tile and the tensor-core
// kernel's 8-row n-tiles and 64-row chunks, rows anywhere in the batch, with k a multiple of 16
// (both kernels' fast paths), of 8 only, or neither (the rows kernel's scalar path, which the
// tensor-core setting falls back to by shape); and the products agree with the CPU's fp32 ones
// (the rows kernel keeps x in fp32; the tensor-core kernel rounds it to bf16, as cuBLAS does).
// With the tensor-core kernel's small-n variant on (LORAPLEX_DETERMINISTIC_SMALL), rows alone
// and batches of up to 8 take it and larger batches the one-variant kernel: still bitwise equal.
// With its wide or deep variant on (LORAPLEX_DETERMINISTIC_WIDE), batches of more than 8 rows
// take it and rows alone the big (or small) variant: still bitwise equal.
func TestBatchInvariantMatMul(t *testing.T) {
	for _, kernel := range []struct {
		gemm  cuda.DeterministicGEMM
		small bool
		wide  cuda.DeterministicWide
		tol   float64
	}{
		{cuda.DeterministicGEMMRows, false, cuda.DeterministicWideOff, 1e-4},
		{cuda.DeterministicGEMMTensorCores, false, cuda.DeterministicWideOff, 2e-2},
		{cuda.DeterministicGEMMTensorCoresBF16X, false, cuda.DeterministicWideOff, 2e-2},
		{cuda.DeterministicGEMMTensorCores, true, cuda.DeterministicWideOff, 2e-2},
		{cuda.DeterministicGEMMTensorCoresBF16X, true, cuda.DeterministicWideOff, 2e-2},
		{cuda.DeterministicGEMMTensorCores, false, cuda.DeterministicWideOn, 2e-2},
		{cuda.DeterministicGEMMTensorCoresBF16X, true, cuda.DeterministicWideOn, 2e-2},
		{cuda.DeterministicGEMMTensorCoresBF16X, false, cuda.DeterministicWideDeep, 2e-2},
		{cuda.DeterministicGEMMPadded, false, cuda.DeterministicWideOff, 2e-2},
	} {
		t.Run(fmt.Sprintf("%s/small=%v/wide=%s", kernel.gemm, kernel.small, kernel.wide), func(t *testing.T) {
			p := pair{cpu.New(0), newGPU(t)}
			defer p.c.Close()
			p.g.SetBatchInvariant(true)
			p.g.SetDeterministicGEMM(kernel.gemm)
			p.g.SetDeterministicSmall(kernel.small)
			p.g.SetDeterministicWide(kernel.wide)
			r := rand.New(rand.NewPCG(8, 9))
			for _, mk := range [][2]int{{300, 320}, {4096, 4096}, {1040, 1008}, {96, 100}, {72, 264}} {
				m, k := mk[0], mk[1]
				wc, wg := p.upload(t, hostBF16(r, m, k, 1/math.Sqrt(float64(k))))
				const rows = 130
				x := randFloats(r, rows*k)
				alone := make([][]float32, rows)
				for i := range alone {
					xg := p.g.Alloc(1, k)
					og := p.g.Alloc(1, m)
					if err := p.g.Write(xg, x[i*k:(i+1)*k]); err != nil {
						t.Fatal(err)
					}
					p.g.MatMul(og, xg, wg)
					alone[i] = make([]float32, m)
					if err := p.g.Read(og, alone[i]); err != nil {
						t.Fatal(err)
					}
					p.g.Free(xg)
					p.g.Free(og)
				}
				for _, n := range []int{2, 7, 8, 9, 17, 63, 64, 65, 100, 130} {
					off := r.IntN(rows - n + 1) // the rows sit anywhere in the batch
					xc, xg := p.tensor(t, n, k, x[off*k:(off+n)*k])
					oc, og := p.tensor(t, n, m, nil)
					p.g.MatMul(og, xg, wg)
					p.c.MatMul(oc, xc, wc)
					p.compare(t, fmt.Sprintf("batch-invariant matmul n=%d m=%d k=%d", n, m, k), oc, og, kernel.tol)
					got := make([]float32, n*m)
					if err := p.g.Read(og, got); err != nil {
						t.Fatal(err)
					}
					for i := 0; i < n; i++ {
						for j := 0; j < m; j++ {
							if math.Float32bits(got[i*m+j]) != math.Float32bits(alone[off+i][j]) {
								t.Fatalf("m=%d k=%d: row %d of a %d-row product (row %d of the inputs), column %d: %v, alone %v",
									m, k, i, n, off+i, j, got[i*m+j], alone[off+i][j])
							}
						}
					}
					p.g.Free(xg)
					p.g.Free(og)
				}
				p.g.Free(wg)
			}
			if err := p.g.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Deterministic mode's tensor-core product (kernels/gemm_invariant.cu) is x · Wᵀ with x rounded
// to bf16: it agrees with a float64 reference over the same bf16 inputs within fp32 summation
// error (1e-4 of the sum of |terms| per output, where a misplaced fragment element is off by
// the size of the output itself), and with the CPU's fp32 x · bf16 W within the 2e-2 bound of
// TestMatMulSweep; rounding x in the kernel or into a bf16 copy first gives bitwise the same
// products; over row counts below, at and across its 8-row n-tiles and 64-row chunks,
// the supported models' shapes (4,096, 1,024 and 14,336 columns; k 4,096 and 14,336) and odd
// multiples of 16 for k (a partial last stage of 64), with m off its 32-column strips. Its
// small-n variant (LORAPLEX_DETERMINISTIC_SMALL: up to 8 rows, one warp per 16 columns, stages
// of 128 k) gives every row, x in fp32 or bf16, bitwise what the one-variant kernel gives the
// same row inside a 64-row batch of other rows; its wide and deep variants
// (LORAPLEX_DETERMINISTIC_WIDE: more than 8 rows; 64-column strips, or a deeper pipeline) give
// bitwise the big variant's products, x in fp32 or bf16, at every row count from 9 to 64 and
// across 64-row chunks.
func TestGemmInvariant(t *testing.T) {
	p := pair{cpu.New(0), newGPU(t)}
	defer p.c.Close()
	p.g.SetBatchInvariant(true)
	p.g.SetDeterministicSmall(false)
	p.g.SetDeterministicWide(cuda.DeterministicWideOff)
	r := rand.New(rand.NewPCG(10, 11))
	all := []int{1, 2, 7, 16, 17, 64, 100, 256}
	for _, sh := range []struct {
		m, k int
		ns   []int
	}{
		{4096, 4096, all},
		{1024, 4096, all},
		{14336, 4096, []int{1, 17, 64}},
		{4096, 14336, []int{1, 17, 64}},
		{300, 208, all},   // k = 13 x 16
		{33, 48, all},     // k = 3 x 16, one column past a strip
		{1040, 1008, all}, // k = 63 x 16: the last stage holds 48 of its 64
		{5, 16, all},      // one k-step, part of one strip
	} {
		m, k := sh.m, sh.k
		wh := hostBF16(r, m, k, 1/math.Sqrt(float64(k)))
		wc, wg := p.upload(t, wh)
		w := make([]float64, m*k)
		for i := range w {
			w[i] = float64(model.BF16ToF32(binary.LittleEndian.Uint16(wh.Data[2*i:])))
		}
		var worst float64
		for _, n := range sh.ns {
			x := randFloats(r, n*k)
			xb := make([]float64, len(x)) // x as the kernel multiplies it
			for i, v := range x {
				xb[i] = float64(model.BF16ToF32(model.F32ToBF16(v)))
			}
			xc, xg := p.tensor(t, n, k, x)
			oc, og := p.tensor(t, n, m, nil)
			p.g.SetDeterministicGEMM(cuda.DeterministicGEMMTensorCoresBF16X)
			p.g.MatMul(og, xg, wg)
			viaCopy := make([]float32, n*m)
			if err := p.g.Read(og, viaCopy); err != nil {
				t.Fatal(err)
			}
			p.g.SetDeterministicGEMM(cuda.DeterministicGEMMTensorCores)
			p.g.MatMul(og, xg, wg)
			p.c.MatMul(oc, xc, wc)
			what := fmt.Sprintf("tensor-core invariant matmul n=%d m=%d k=%d", n, m, k)
			p.compare(t, what, oc, og, 2e-2)
			got := make([]float32, n*m)
			if err := p.g.Read(og, got); err != nil {
				t.Fatal(err)
			}
			for e := range got {
				if math.Float32bits(got[e]) != math.Float32bits(viaCopy[e]) {
					t.Fatalf("%s: element %d: %v with x rounded in the kernel, %v from its bf16 copy", what, e, got[e], viaCopy[e])
				}
			}
			if n <= 8 {
				smallVariantMatchesBatch(t, p.g, r, what, x, n, k, wg)
			}
			// The float64 reference: every row where it is cheap, else rows at the n-tile and
			// chunk edges (every column, so every strip and fragment position is checked).
			check := []int{0, 7, 8, 15, 16, 63, 64, 65, n / 2, n - 1}
			if n*m*k <= 1<<27 {
				check = check[:0]
				for i := 0; i < n; i++ {
					check = append(check, i)
				}
			}
			for _, i := range check {
				if i >= n {
					continue
				}
				xr := xb[i*k : (i+1)*k]
				for j := 0; j < m; j++ {
					var ref, mag float64
					for c, v := range xr {
						ref += v * w[j*k+c]
						mag += math.Abs(v * w[j*k+c])
					}
					d := math.Abs(float64(got[i*m+j]) - ref)
					if d > 1e-4*mag+1e-30 {
						t.Fatalf("%s: row %d column %d: %v, float64 reference %v (sum of |terms| %v)", what, i, j, got[i*m+j], ref, mag)
					}
					if mag > 0 {
						worst = max(worst, d/mag)
					}
				}
			}
			p.g.Free(xg)
			p.g.Free(og)
		}
		batchVariantsMatchBig(t, p.g, r, m, k, wg)
		p.g.Free(wg)
		t.Logf("m=%d k=%d: worst |gpu - float64| / sum|terms| = %.2g", m, k, worst)
	}
	if err := p.g.Err(); err != nil {
		t.Fatal(err)
	}
}

// batchVariants are the tensor-core kernel's variants for more than 8 rows besides the big one.
var batchVariants = []cuda.DeterministicWide{cuda.DeterministicWideOn, cuda.DeterministicWideDeep}

// batchVariantsMatchBig checks TestGemmInvariant's rule for the wide and deep variants: products
// of random x by w (m x k) at row counts from 9 to 64 and across chunks, through each variant
// with x in fp32 and in bf16, are bitwise the big variant's with x in fp32.
func batchVariantsMatchBig(t *testing.T, g *cuda.Backend, r *rand.Rand, m, k int, w model.Tensor) {
	t.Helper()
	defer g.SetDeterministicWide(cuda.DeterministicWideOff)
	for _, n := range []int{9, 12, 16, 23, 24, 31, 32, 33, 40, 48, 57, 63, 64, 65, 100, 128, 130, 200} {
		x, y := g.Alloc(n, k), g.Alloc(n, m)
		if err := g.Write(x, randFloats(r, n*k)); err != nil {
			t.Fatal(err)
		}
		g.SetDeterministicWide(cuda.DeterministicWideOff)
		g.SetDeterministicGEMM(cuda.DeterministicGEMMTensorCores)
		g.MatMul(y, x, w)
		want := make([]float32, n*m)
		if err := g.Read(y, want); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, n*m)
		for _, v := range batchVariants {
			for _, d := range []cuda.DeterministicGEMM{cuda.DeterministicGEMMTensorCores, cuda.DeterministicGEMMTensorCoresBF16X} {
				g.SetDeterministicWide(v)
				g.SetDeterministicGEMM(d)
				if err := g.Write(y, nanFloats(n*m)); err != nil { // an output left unwritten shows
					t.Fatal(err)
				}
				g.MatMul(y, x, w)
				if err := g.Read(y, got); err != nil {
					t.Fatal(err)
				}
				for e := range got {
					if math.Float32bits(got[e]) != math.Float32bits(want[e]) {
						t.Fatalf("n=%d m=%d k=%d: variant %s (%s), row %d column %d: %v, the big variant %v",
							n, m, k, v, d, e/m, e%m, got[e], want[e])
					}
				}
			}
		}
		g.Free(x)
		g.Free(y)
	}
}

// smallVariantMatchesBatch checks TestGemmInvariant's rule for the small-n variant: the n rows of
// x (n <= 8) through it, x in fp32 and in bf16, are bitwise those rows placed inside a 64-row
// batch of other rows, which the one-variant kernel computes.
func smallVariantMatchesBatch(t *testing.T, g *cuda.Backend, r *rand.Rand, what string, x []float32, n, k int, w model.Tensor) {
	t.Helper()
	m := w.Rows
	const batch = 64
	off := r.IntN(batch - n + 1)
	xb := randFloats(r, batch*k)
	copy(xb[off*k:], x)
	xg, big := g.Alloc(batch, k), g.Alloc(batch, m)
	defer g.Free(xg)
	defer g.Free(big)
	if err := g.Write(xg, xb); err != nil {
		t.Fatal(err)
	}
	g.SetDeterministicSmall(false)
	g.SetDeterministicGEMM(cuda.DeterministicGEMMTensorCores)
	g.MatMul(big, xg, w)
	want := make([]float32, batch*m)
	if err := g.Read(big, want); err != nil {
		t.Fatal(err)
	}
	xn, yn := g.Alloc(n, k), g.Alloc(n, m)
	defer g.Free(xn)
	defer g.Free(yn)
	if err := g.Write(xn, x); err != nil {
		t.Fatal(err)
	}
	g.SetDeterministicSmall(true)
	defer g.SetDeterministicSmall(false)
	for _, d := range []cuda.DeterministicGEMM{cuda.DeterministicGEMMTensorCores, cuda.DeterministicGEMMTensorCoresBF16X} {
		g.SetDeterministicGEMM(d)
		g.MatMul(yn, xn, w)
		got := make([]float32, n*m)
		if err := g.Read(yn, got); err != nil {
			t.Fatal(err)
		}
		for e := range got {
			if v := want[off*m+e]; math.Float32bits(got[e]) != math.Float32bits(v) {
				t.Fatalf("%s: small-n variant (%s), row %d column %d: %v, the one-variant kernel in a %d-row batch %v",
					what, d, e/m, e%m, got[e], batch, v)
			}
		}
	}
}

// In deterministic mode on the tensor cores (x rounded in the kernel or copied to bf16 first)
// the products of one input (q/k/v, gate/up) run in one launch whatever the row count and the
// fusion switch, each part bitwise what MatMul gives it (parts whose strips share the grid,
// widths off the 32-column strips); a part whose k the kernel does not take sends them all
// back to MatMul, and on the rows kernel the shared launch is left to the fusion switch. With the
// small-n variant on (LORAPLEX_DETERMINISTIC_SMALL), shared launches of up to 8 rows take it, and
// with its wide or deep variant on (LORAPLEX_DETERMINISTIC_WIDE) those of more rows take that
// one: each part is still bitwise what MatMul gives it on the big variant.
func TestInvariantMatMulShared(t *testing.T) {
	g := newGPU(t)
	g.SetBatchInvariant(true)
	g.SetFusedDecode(false)
	r := rand.New(rand.NewPCG(12, 13))
	upload := func(m, k int) model.Tensor {
		w, err := g.Upload(hostBF16(r, m, k, 1/math.Sqrt(float64(k))), m, k)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	read := func(o model.Tensor) []float32 {
		v := make([]float32, o.Rows*o.Cols)
		if err := g.Read(o, v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, v := range []struct {
		gemm  cuda.DeterministicGEMM
		small bool
		wide  cuda.DeterministicWide
	}{
		{cuda.DeterministicGEMMTensorCores, false, cuda.DeterministicWideOff}, {cuda.DeterministicGEMMTensorCoresBF16X, false, cuda.DeterministicWideOff},
		{cuda.DeterministicGEMMTensorCores, true, cuda.DeterministicWideOff}, {cuda.DeterministicGEMMTensorCoresBF16X, true, cuda.DeterministicWideOff},
		{cuda.DeterministicGEMMTensorCores, false, cuda.DeterministicWideOn}, {cuda.DeterministicGEMMTensorCoresBF16X, true, cuda.DeterministicWideOn},
		{cuda.DeterministicGEMMTensorCores, true, cuda.DeterministicWideDeep}, {cuda.DeterministicGEMMTensorCoresBF16X, false, cuda.DeterministicWideDeep},
		{cuda.DeterministicGEMMPadded, false, cuda.DeterministicWideOff},
	} {
		d := v.gemm
		g.SetDeterministicGEMM(d)
		for _, sh := range []struct {
			k      int
			widths []int
		}{{4096, []int{4096, 1024, 1024}}, {4096, []int{14336, 14336}}, {208, []int{300, 33, 5}}, {48, []int{40}}} {
			ws := make([]model.Tensor, len(sh.widths))
			for i, m := range sh.widths {
				ws[i] = upload(m, sh.k)
			}
			for _, n := range []int{1, 7, 8, 9, 33, 64, 100} {
				x := g.Alloc(n, sh.k)
				if err := g.Write(x, randFloats(r, n*sh.k)); err != nil {
					t.Fatal(err)
				}
				shared, alone := make([]model.Tensor, len(ws)), make([]model.Tensor, len(ws))
				g.SetDeterministicSmall(false)
				g.SetDeterministicWide(cuda.DeterministicWideOff)
				for i, m := range sh.widths {
					shared[i], alone[i] = g.Alloc(n, m), g.Alloc(n, m)
					g.MatMul(alone[i], x, ws[i])
				}
				g.SetDeterministicSmall(v.small)
				g.SetDeterministicWide(v.wide)
				if !g.MatMulShared(shared, x, ws) {
					t.Fatalf("k=%d widths %v, %d rows: MatMulShared declined in deterministic mode on %s", sh.k, sh.widths, n, d)
				}
				for i := range ws {
					got, want := read(shared[i]), read(alone[i])
					for e := range got {
						if math.Float32bits(got[e]) != math.Float32bits(want[e]) {
							t.Fatalf("%s (small=%v, wide=%s), k=%d widths %v, %d rows: part %d element %d: %v shared, %v from MatMul", d, v.small, v.wide, sh.k, sh.widths, n, i, e, got[e], want[e])
						}
					}
					g.Free(shared[i])
					g.Free(alone[i])
				}
				g.Free(x)
			}
			for _, w := range ws {
				g.Free(w)
			}
		}
	}
	g.SetDeterministicSmall(false)
	g.SetDeterministicWide(cuda.DeterministicWideOff)
	g.SetDeterministicGEMM(cuda.DeterministicGEMMTensorCores)
	x := g.Alloc(3, 40) // k = 40: the rows kernel's, so MatMul's, one part at a time
	ws, outs := []model.Tensor{upload(64, 40), upload(32, 40)}, []model.Tensor{g.Alloc(3, 64), g.Alloc(3, 32)}
	if g.MatMulShared(outs, x, ws) {
		t.Fatal("MatMulShared took k = 40, which the tensor-core kernel does not")
	}
	g.SetDeterministicGEMM(cuda.DeterministicGEMMRows)
	x = g.Alloc(3, 64)
	ws, outs = []model.Tensor{upload(64, 64)}, []model.Tensor{g.Alloc(3, 64)}
	if g.MatMulShared(outs, x, ws) {
		t.Fatal("MatMulShared ran on the rows kernel with fusion off")
	}
	if err := g.Err(); err != nil {
		t.Fatal(err)
	}
}

// fixtureEngineCUDA serves fixture model name with its four adapters on b.
func fixtureEngineCUDA(t testing.TB, b *cuda.Backend, name string, opt serve.Options) (*serve.Engine, *model.Config) {
	t.Helper()
	cfg, w := fixture.LoadModel(t, fixture.Dir(name), b)
	e, err := serve.NewEngine(cfg, b, w, nil, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	for _, a := range fixture.Adapters {
		if err := e.LoadAdapter(a, fixture.AdapterDir(name, a)); err != nil {
			t.Fatal(err)
		}
	}
	return e, cfg
}

// Deterministic mode on the GPU (issue 15 item 6): fixture requests (the base model and four
// adapters, greedy with top logprobs and seeded sampling, short and long prompts) get bitwise
// the tokens and logprobs they get alone when they run inside busy mixed batches (other
// adapters, other lengths, any place in the batch, prompts chunked differently, recorded
// graphs and direct steps), with every product kernel (the fixtures' widths are multiples of
// 16, so the tensor-core settings run every product on lp_gemm_invariant_bf16), and with the
// fused decode kernels on (whose GEMV arithmetic single rows must not take while batches take
// the tensor cores: they step aside in the mode), and with the tensor-core kernel's small-n
// variant on (steps of up to 8 rows take it, larger ones the one-variant kernel), and with its
// wide or deep variant on (steps of more than 8 rows take it). Without the
// mode the outputs move with the batch (logged: cuBLAS for batches, the fp32 GEMV alone,
// split counts by batch size).
func TestDeterministicModeIsBatchInvariantOnCUDA(t *testing.T) {
	models := append([]string{"llama"}, fixture.Adapters...)
	for _, name := range []string{"llama", "qwen3"} {
		for _, mode := range []struct {
			deterministic bool
			gemm          cuda.DeterministicGEMM
			fused         bool
			small         bool                   // the tensor-core kernel's small-n variant for up to 8 rows
			wide          cuda.DeterministicWide // its variant for more than 8 rows
		}{
			{true, cuda.DeterministicGEMMRows, false, false, cuda.DeterministicWideOff},
			{true, cuda.DeterministicGEMMTensorCores, false, false, cuda.DeterministicWideOff},
			{true, cuda.DeterministicGEMMTensorCoresBF16X, false, false, cuda.DeterministicWideOff},
			{true, cuda.DeterministicGEMMTensorCores, true, false, cuda.DeterministicWideOff},
			{true, cuda.DeterministicGEMMTensorCoresBF16X, false, true, cuda.DeterministicWideOff},
			{true, cuda.DeterministicGEMMTensorCoresBF16X, false, true, cuda.DeterministicWideOn},
			{true, cuda.DeterministicGEMMTensorCores, false, false, cuda.DeterministicWideDeep},
			{true, cuda.DeterministicGEMMPadded, false, false, cuda.DeterministicWideOff},
			{false, cuda.DeterministicGEMMRows, false, false, cuda.DeterministicWideOff},
		} {
			deterministic := mode.deterministic
			t.Run(fmt.Sprintf("%s/deterministic=%v/gemm=%s/fused=%v/small=%v/wide=%s", name, deterministic, mode.gemm, mode.fused, mode.small, mode.wide), func(t *testing.T) {
				g := newGPU(t)
				g.SetDeterministicGEMM(mode.gemm)
				g.SetFusedDecode(mode.fused)
				g.SetDeterministicSmall(mode.small)
				g.SetDeterministicWide(mode.wide)
				opt := batchinv.Options(name)
				opt.Deterministic = deterministic
				e, cfg := fixtureEngineCUDA(t, g, name, opt)
				models[0] = name
				reqs := batchinv.Requests(t, name)
				diffs := batchinv.Differences(t, e, reqs, models, cfg.VocabSize, 3)
				if deterministic {
					for _, d := range diffs {
						t.Error(d)
					}
					t.Logf("%d requests x 3 busy rounds, all bitwise equal to their runs alone", len(reqs))
				} else {
					t.Logf("default mode: %d outputs differ from the runs alone", len(diffs))
				}
				if err := g.Err(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// BenchmarkDeterministicDecodeCUDA is end-to-end decode throughput of the demo model on the
// GPU with and without deterministic mode, at batch 1 and 64; it logs deterministic ÷
// default per batch.
func BenchmarkDeterministicDecodeCUDA(b *testing.B) {
	prompt := []int{1, 2, 3, 4, 5, 6, 7, 8}
	seed := uint64(0)
	tps := map[string]float64{}
	for _, deterministic := range []bool{false, true} {
		g := newGPU(b)
		e, _, tok := demoServer(b, g, serve.Options{MaxNumSeqs: 64, MaxBatchedTokens: 2048, MaxModelLen: 512, Deterministic: deterministic})
		if ids, err := tok.Encode("func main() {", false); err == nil {
			prompt = ids
		}
		for _, batch := range []int{1, 64} {
			key := fmt.Sprintf("deterministic=%v/batch=%d", deterministic, batch)
			b.Run(key, func(b *testing.B) {
				tps[key] = decodeTokensPerSecond(b, e, prompt, batch, nil, &seed)
				b.ReportMetric(tps[key], "tok/s")
			})
		}
	}
	for _, batch := range []int{1, 64} {
		d, f := tps[fmt.Sprintf("deterministic=true/batch=%d", batch)], tps[fmt.Sprintf("deterministic=false/batch=%d", batch)]
		if f > 0 {
			b.Logf("batch %d: deterministic %.0f tok/s, default %.0f tok/s, deterministic ÷ default = %.3f", batch, d, f, d/f)
		}
	}
}

// BenchmarkGemmInvariantVariants is the weight stream of deterministic mode's tensor-core
// product at batch 64 (x copied to bf16), per variant for more than 8 rows
// (LORAPLEX_DETERMINISTIC_WIDE), and of its padded cuBLAS product, per Llama-3-8B shape: bytes of W read per second, over
// enough copies of W (256 MB or more) that L2 cannot hold them between products.
func BenchmarkGemmInvariantVariants(b *testing.B) {
	g := newGPU(b)
	g.SetBatchInvariant(true)
	g.SetDeterministicGEMM(cuda.DeterministicGEMMTensorCoresBF16X)
	r := rand.New(rand.NewPCG(14, 15))
	const n = 64
	for _, sh := range [][2]int{{4096, 4096}, {14336, 4096}, {4096, 14336}, {1024, 4096}} {
		m, k := sh[0], sh[1]
		host := hostBF16(r, m, k, 1/math.Sqrt(float64(k)))
		ws := make([]model.Tensor, (256<<20+2*m*k-1)/(2*m*k))
		for i := range ws {
			w, err := g.Upload(host, m, k)
			if err != nil {
				b.Fatal(err)
			}
			ws[i] = w
		}
		x, y := g.Alloc(n, k), g.Alloc(n, m)
		if err := g.Write(x, randFloats(r, n*k)); err != nil {
			b.Fatal(err)
		}
		for _, v := range []cuda.DeterministicWide{cuda.DeterministicWideOff, cuda.DeterministicWideOn, cuda.DeterministicWideDeep, -1} {
			name := "wide=" + v.String()
			if v < 0 { // deterministic mode's cuBLAS products on a fixed 64-row shape
				name = cuda.DeterministicGEMMPadded.String()
			}
			b.Run(fmt.Sprintf("m=%d/k=%d/%s", m, k, name), func(b *testing.B) {
				if v < 0 {
					g.SetDeterministicGEMM(cuda.DeterministicGEMMPadded)
					defer g.SetDeterministicGEMM(cuda.DeterministicGEMMTensorCoresBF16X)
				} else {
					g.SetDeterministicWide(v)
				}
				for _, w := range ws { // warm up: attributes set, W through L2 once
					g.MatMul(y, x, w)
				}
				if err := g.Sync(); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					g.MatMul(y, x, ws[i%len(ws)])
				}
				if err := g.Sync(); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(2*m*k)*float64(b.N)/b.Elapsed().Seconds()/1e12, "weight-TB/s")
			})
		}
		g.Free(x)
		g.Free(y)
		for _, w := range ws {
			g.Free(w)
		}
	}
}
