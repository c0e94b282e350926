//go:build cuda

package cuda_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// The skinny kernel (LORAPLEX_GEMM_SKINNY) computes a product of at most 64 outputs at up to 256
// rows (those past the GEMV's) as cuBLAS does, from the same bf16 inputs: within a few ulp of a float64 product of
// them (and of cuBLAS's result), every output written; a row's outputs are bitwise the same
// whatever the other rows (the first rows of a batch alone); products of more outputs or rows
// stay on cuBLAS.
func TestGemmSkinny(t *testing.T) {
	g := newGPU(t)
	defer g.SetGemmSkinny(false)
	r := rand.New(rand.NewPCG(71, 72))
	for _, sh := range []struct{ n, k, m int }{{9, 4096, 28}, {64, 4096, 28}, {64, 14336, 28}, {64, 4096, 84}, {17, 64, 1},
		{33, 1024, 5}, {256, 512, 64}, {100, 8, 63}} {
		t.Run(fmt.Sprintf("n%d_k%d_m%d", sh.n, sh.k, sh.m), func(t *testing.T) {
			wh := hostBF16(r, sh.m, sh.k, 1/math.Sqrt(float64(sh.k)))
			w, err := g.Upload(wh, sh.m, sh.k)
			if err != nil {
				t.Fatal(err)
			}
			xv := randFloats(r, sh.n*sh.k)
			x, first, skinny, blas := g.Alloc(sh.n, sh.k), g.Alloc(9, sh.m), g.Alloc(sh.n, sh.m), g.Alloc(sh.n, sh.m)
			defer func() {
				for _, v := range []model.Tensor{w, x, first, skinny, blas} {
					g.Free(v)
				}
			}()
			if err := g.Write(x, xv); err != nil {
				t.Fatal(err)
			}
			for _, o := range []model.Tensor{first, skinny, blas} {
				if err := g.Write(o, nanFloats(o.Rows*o.Cols)); err != nil {
					t.Fatal(err)
				}
			}
			g.SetGemmSkinny(true)
			took := g.SkinnyProducts()
			g.MatMul(skinny, x, w)
			g.MatMul(first, x.Slice(0, 9), w)
			big := sh.m > 64 // cuBLAS's, the nine rows' product too
			if !big {
				took += 2
			}
			if got := g.SkinnyProducts(); got != took {
				t.Fatalf("the skinny kernel took %d products, want %d", got, took)
			}
			g.SetGemmSkinny(false)
			g.MatMul(blas, x, w)
			got, ref, nine := read(t, g, skinny), read(t, g, blas), read(t, g, first)
			for i := 0; i < sh.n; i++ {
				for j := 0; j < sh.m; j++ {
					var want, mag float64
					for c := 0; c < sh.k; c++ {
						xb := float64(model.BF16ToF32(model.F32ToBF16(xv[i*sh.k+c])))
						wb := float64(model.BF16ToF32(binary.LittleEndian.Uint16(wh.Data[2*(j*sh.k+c):])))
						want += xb * wb
						mag += math.Abs(xb * wb)
					}
					e := got[i*sh.m+j]
					if d := math.Abs(float64(e) - want); !(d <= 1e-4*mag+1e-6) {
						t.Fatalf("y[%d, %d] = %v, float64 product %v (|terms| %g)", i, j, e, want, mag)
					}
					if d := math.Abs(float64(e) - float64(ref[i*sh.m+j])); !(d <= 2e-4*mag+1e-6) {
						t.Fatalf("y[%d, %d] = %v, cuBLAS %v", i, j, e, ref[i*sh.m+j])
					}
					if i < 9 && !big && math.Float32bits(nine[i*sh.m+j]) != math.Float32bits(e) {
						t.Fatalf("y[%d, %d] = %v in the first nine rows alone, %v among %d", i, j, nine[i*sh.m+j], e, sh.n)
					}
				}
			}
		})
	}
}

// Products that share an input (MatMulShared: a routed decode layer's q/k/v with their three
// gates, gate/up with two) give the skinny kernel's products in one launch of parts, each to the
// bit what the product alone gives (MatMul), and leave the wide products to cuBLAS as MatMul
// does; a part of more than 64 outputs stays on cuBLAS too.
func TestGemmSkinnyParts(t *testing.T) {
	g := newGPU(t)
	defer g.SetGemmSkinny(false)
	g.SetGemmSkinny(true)
	r := rand.New(rand.NewPCG(73, 74))
	const n, k = 64, 1024
	rows := []int{512, 28, 128, 28, 5, 64, 65}
	var ws, shared, alone []model.Tensor
	for _, m := range rows {
		w, err := g.Upload(hostBF16(r, m, k, 1/math.Sqrt(k)), m, k)
		if err != nil {
			t.Fatal(err)
		}
		ws, shared, alone = append(ws, w), append(shared, g.Alloc(n, m)), append(alone, g.Alloc(n, m))
	}
	x := g.Alloc(n, k)
	defer func() {
		for _, v := range append(append(append(ws, shared...), alone...), x) {
			g.Free(v)
		}
	}()
	if err := g.Write(x, randFloats(r, n*k)); err != nil {
		t.Fatal(err)
	}
	for _, o := range shared {
		if err := g.Write(o, nanFloats(o.Rows*o.Cols)); err != nil {
			t.Fatal(err)
		}
	}
	took := g.SkinnyProducts()
	if !g.MatMulShared(shared, x, ws) {
		t.Fatal("MatMulShared declined 64 rows")
	}
	if got := g.SkinnyProducts() - took; got != 4 {
		t.Fatalf("the skinny kernel took %d of the shared products, want 4 (28, 28, 5 and 64 outputs)", got)
	}
	for i := range ws {
		g.MatMul(alone[i], x, ws[i])
	}
	for i, m := range rows {
		got, want := read(t, g, shared[i]), read(t, g, alone[i])
		for j := range got {
			if math.Float32bits(got[j]) != math.Float32bits(want[j]) {
				t.Fatalf("product %d (%d outputs): y[%d, %d] = %v shared, %v alone", i, m, j/m, j%m, got[j], want[j])
			}
		}
	}
	if err := g.Err(); err != nil {
		t.Fatal(err)
	}
}
