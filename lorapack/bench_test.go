package lorapack

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// llama3Shapes are (out, in) of the seven projections of Llama-3-8B: hidden 4096, 8 KV heads of
// 128, intermediate 14336; 32 layers.
var llama3Shapes = [7][2]int{{4096, 4096}, {1024, 4096}, {1024, 4096}, {4096, 4096}, {14336, 4096}, {14336, 4096}, {4096, 14336}}

const benchRank, benchLayers = 16, 32

// benchTensor is one factor of the synthetic adapter.
type benchTensor struct {
	rows, cols int
	vals       []float32
}

// randomAdapter is a random rank-16 LoRA on all seven projections of every Llama-3-8B layer
// (41,943,040 values), module by module A then B. No trained adapters exist yet, so the factors
// are random: A as peft initialises it (kaiming-uniform, U(-1/sqrt(in), 1/sqrt(in))) and B
// Gaussian (std 0.01; peft starts B at zero and training fills it). Random factors have no
// heavy tail, which is the worst case for top-K sparsification: trained LoRA updates are more
// concentrated, so these errors are upper bounds on what a trained adapter would see.
var randomAdapter = sync.OnceValue(func() []benchTensor {
	r := rand.New(rand.NewPCG(2026, 11))
	var out []benchTensor
	for range benchLayers {
		for _, s := range llama3Shapes {
			o, in := s[0], s[1]
			a := make([]float32, benchRank*in)
			bound := 1 / math.Sqrt(float64(in))
			for i := range a {
				a[i] = float32((2*r.Float64() - 1) * bound)
			}
			b := make([]float32, o*benchRank)
			for i := range b {
				b[i] = float32(r.NormFloat64() * 0.01)
			}
			out = append(out, benchTensor{benchRank, in, a}, benchTensor{o, benchRank, b})
		}
	}
	return out
})

// encodeAll encodes the adapter with one codec at one density (per tensor, or global with
// alpha_c 1); codec 0 picks the smallest sparse codec per tensor.
func encodeAll(tb testing.TB, ts []benchTensor, c Codec, density float64, global bool) [][]byte {
	var g *Global
	if global {
		all := make([][]float32, len(ts))
		for i, t := range ts {
			all[i] = t.vals
		}
		var err error
		if g, err = NewGlobal(all, density, 1); err != nil {
			tb.Fatal(err)
		}
	}
	out := make([][]byte, len(ts))
	for i, t := range ts {
		var err error
		if c == Dense {
			out[i], err = EncodeDense(t.vals, t.rows, t.cols)
		} else if c == Q8 || c == Q4 {
			out[i], err = EncodeQuant(c, t.vals, t.rows, t.cols, DefaultGroup)
		} else {
			var sp *Sparse
			if g != nil {
				sp, err = g.Sparsify(t.vals, t.rows, t.cols)
			} else {
				sp, err = PerTensor(t.vals, t.rows, t.cols, density)
			}
			if err != nil {
				tb.Fatal(err)
			}
			cc := c
			switch {
			case cc == RiceQ8:
				out[i], err = EncodeRiceQ8(sp, t.vals)
			case cc == 0:
				out[i], err = EncodeSparse(Smallest(sp), sp)
			default:
				out[i], err = EncodeSparse(cc, sp)
			}
		}
		if err != nil {
			tb.Fatal(err)
		}
	}
	return out
}

// decodeAll decodes every stream into preallocated bf16 buffers on all CPUs, as
// Container.DecodeFile does.
func decodeAll(streams [][]byte, dst [][]uint16) error {
	var wg sync.WaitGroup
	errs := make([]error, len(streams))
	work := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range work {
				errs[i] = DecodeBF16(streams[i], dst[i])
			}
		})
	}
	for i := range streams {
		work <- i
	}
	close(work)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkDecode decodes the whole rank-16 Llama-3-8B adapter (41,943,040 values) into
// preallocated bf16 buffers: the codec's share of the load path.
func BenchmarkDecode(b *testing.B) {
	ts := randomAdapter()
	dst := make([][]uint16, len(ts))
	for i, t := range ts {
		dst[i] = make([]uint16, len(t.vals))
	}
	type cfg struct {
		c Codec
		d float64
	}
	cases := []cfg{{Dense, 1}, {Q8, 1}, {Q4, 1}, {RiceQ8, 0.1}, {RiceQ8, 0.25}, {RiceQ8, 0.5}}
	for _, d := range []float64{0.01, 0.05, 0.1, 0.25, 0.5} {
		for _, c := range []Codec{Ternary, Bitmap, Rice} {
			cases = append(cases, cfg{c, d})
		}
	}
	for _, c := range cases {
		b.Run(fmt.Sprintf("%v/density=%g", c.c, c.d), func(b *testing.B) {
			streams := encodeAll(b, ts, c.c, c.d, false)
			var size int64
			for _, s := range streams {
				size += int64(len(s))
			}
			b.SetBytes(size)
			for b.Loop() {
				if err := decodeAll(streams, dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecodeFile is the whole load-path decode of a lorapack file of the adapter: allocate
// the output (84 MB of bf16: its page faults are part of the cost), decode on all CPUs, lay out
// as safetensors. The adapter is stored as BF16 so that it decodes to BF16.
func BenchmarkDecodeFile(b *testing.B) {
	ts := randomAdapter()
	for _, c := range []struct {
		name string
		c    Codec
		d    float64
	}{{"dense-bf16", Dense, 1}, {"auto/density=0.05", 0, 0.05}, {"auto/density=0.1", 0, 0.1}, {"ternary2/density=0.1", Ternary, 0.1}, {"bitmap/density=0.1", Bitmap, 0.1}} {
		b.Run(c.name, func(b *testing.B) {
			streams := encodeAll(b, ts, c.c, c.d, false)
			m := &Manifest{Format: Format, Tensors: map[string]TensorInfo{}}
			var ss []Stream
			for i, s := range streams {
				h, _, _ := ParseHeader(s)
				name := fmt.Sprintf("base_model.model.model.layers.%d.x%d.lora_%c.weight", i/14, i%14/2, "AB"[i%2])
				m.Tensors[name] = TensorInfo{Codec: h.Codec.String(), Shape: [2]int{h.Rows, h.Cols}, DType: "BF16", Bytes: len(s)}
				ss = append(ss, Stream{name, s})
			}
			path := filepath.Join(b.TempDir(), "a.lorapack")
			f, err := os.Create(path)
			if err != nil {
				b.Fatal(err)
			}
			if err := WriteContainer(f, m, ss); err != nil {
				b.Fatal(err)
			}
			f.Close()
			c, err := Open(path)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			for b.Loop() {
				if _, err := c.DecodeFile(1 << 30); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// gram returns X^T X for a [rows, r] row-major matrix (r x r, float64).
func gramCols(x []float32, y []float32, rows, r int) []float64 {
	g := make([]float64, r*r)
	for o := range rows {
		xr, yr := x[o*r:(o+1)*r], y[o*r:(o+1)*r]
		for i, xi := range xr {
			gi := g[i*r : (i+1)*r]
			for j, yj := range yr {
				gi[j] += float64(xi) * float64(yj)
			}
		}
	}
	return g
}

// gramRows returns X Y^T for [r, cols] row-major matrices.
func gramRows(x, y []float32, r, cols int) []float64 {
	g := make([]float64, r*r)
	for i := range r {
		xi := x[i*cols : (i+1)*cols]
		for j := range r {
			yj := y[j*cols : (j+1)*cols]
			var s float64
			for k, v := range xi {
				s += float64(v) * float64(yj[k])
			}
			g[i*r+j] = s
		}
	}
	return g
}

func dot(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

// productError is ||B A - B' A'||_F / ||B A||_F computed from r x r Gram matrices
// (||B A||^2 = <B^T B, A A^T>, <B A, B' A'> = <B^T B', A A'^T>), which avoids forming the
// out x in products (58M entries for gate_proj).
func productError(a, b, a2, b2 []float32, r, in, out int) float64 {
	bb, b2b2, bb2 := gramCols(b, b, out, r), gramCols(b2, b2, out, r), gramCols(b, b2, out, r)
	aa, a2a2, aa2 := gramRows(a, a, r, in), gramRows(a2, a2, r, in), gramRows(a, a2, r, in)
	n2 := dot(bb, aa)
	e2 := n2 + dot(b2b2, a2a2) - 2*dot(bb2, aa2)
	return math.Sqrt(max(e2, 0) / n2)
}

func relError(x, y []float32) (err2, norm2 float64) {
	for i := range x {
		d := float64(x[i]) - float64(y[i])
		err2 += d * d
		norm2 += float64(x[i]) * float64(x[i])
	}
	return err2, norm2
}

// TestCompressionTable prints the table of bench/results/compression.md. It takes a minute and
// 1 GB, so it runs only with LORAPACK_TABLE=1:
//
//	LORAPACK_TABLE=1 go test ./lorapack -run TestCompressionTable -v -timeout 30m
func TestCompressionTable(t *testing.T) {
	if os.Getenv("LORAPACK_TABLE") == "" {
		t.Skip("set LORAPACK_TABLE=1 to print the compression table")
	}
	ts := randomAdapter()
	var n int64
	for _, x := range ts {
		n += int64(len(x.vals))
	}
	bf16 := 2 * n
	t.Logf("adapter: %d tensors, %d values, %d bytes in bf16", len(ts), n, bf16)
	t.Log("| mode | density | ternary2 | bitmap | rice | auto (ratio vs bf16) | rel. err A | rel. err B | B·A err mean | B·A err max | decode ms (auto, 2 cores) |")
	t.Log("|---|---|---|---|---|---|---|---|---|---|---|")
	type row struct {
		global bool
		d      float64
	}
	rows := []row{{false, 1}}
	for _, g := range []bool{false, true} {
		for _, d := range []float64{0.01, 0.05, 0.1, 0.25, 0.5} {
			rows = append(rows, row{g, d})
		}
	}
	for i, rw := range rows {
		mode := "per-tensor"
		if rw.global {
			mode = "global α=1"
		}
		var sizes []string
		var auto [][]byte
		if i == 0 {
			auto = encodeAll(t, ts, Dense, 1, false)
			mode = "dense-bf16"
			sizes = []string{"-", "-", "-"}
		} else {
			for _, c := range []Codec{Ternary, Bitmap, Rice} {
				sizes = append(sizes, ratio(bf16, encodeAll(t, ts, c, rw.d, rw.global)))
			}
			auto = encodeAll(t, ts, 0, rw.d, rw.global)
		}
		dec := make([][]float32, len(ts))
		var ae2, an2, be2, bn2 float64
		for j, s := range auto {
			dec[j] = make([]float32, len(ts[j].vals))
			if err := DecodeF32(s, dec[j]); err != nil {
				t.Fatal(err)
			}
			e, nn := relError(ts[j].vals, dec[j])
			if j%2 == 0 {
				ae2, an2 = ae2+e, an2+nn
			} else {
				be2, bn2 = be2+e, bn2+nn
			}
		}
		// Product errors per module, on all CPUs.
		errs := make([]float64, len(ts)/2)
		var wg sync.WaitGroup
		for w := range runtime.GOMAXPROCS(0) {
			wg.Go(func() {
				for m := w; m < len(errs); m += runtime.GOMAXPROCS(0) {
					a, b := ts[2*m], ts[2*m+1]
					errs[m] = productError(a.vals, b.vals, dec[2*m], dec[2*m+1], benchRank, a.cols, b.rows)
				}
			})
		}
		wg.Wait()
		var mean, worst float64
		for _, e := range errs {
			mean += e / float64(len(errs))
			worst = max(worst, e)
		}
		dst := make([][]uint16, len(ts))
		for j := range dst {
			dst[j] = make([]uint16, len(ts[j].vals))
		}
		best := time.Duration(math.MaxInt64)
		for range 5 {
			start := time.Now()
			if err := decodeAll(auto, dst); err != nil {
				t.Fatal(err)
			}
			best = min(best, time.Since(start))
		}
		t.Logf("| %s | %g%% | %s | %s | %s | %s | %.3f | %.3f | %.3f | %.3f | %.1f |", mode, 100*rw.d, sizes[0], sizes[1], sizes[2],
			ratio(bf16, auto), math.Sqrt(ae2/an2), math.Sqrt(be2/bn2), mean, worst, float64(best.Microseconds())/1000)
	}
}

func ratio(bf16 int64, streams [][]byte) string {
	var s int64
	for _, x := range streams {
		s += int64(len(x))
	}
	return fmt.Sprintf("%.2f MB (%.1fx)", float64(s)/1e6, float64(bf16)/float64(s))
}
