//go:build cuda

package cuda

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// The host side of adapter uploads, which needs no GPU: size classes and the conversion into
// the staging buffer (its parallel paths included).

func TestSizeClass(t *testing.T) {
	prev := 0
	for n := 1; n < 1<<31; n = n*5/4 + 1 {
		c := sizeClass(n)
		if c < n || c%slabAlign != 0 || c < prev {
			t.Fatalf("sizeClass(%d) = %d (previous %d)", n, c, prev)
		}
		if n > 1<<20 && float64(c-n) > float64(n)/8 {
			t.Fatalf("sizeClass(%d) = %d wastes more than 1/8", n, c)
		}
		if sizeClass(c) != c {
			t.Fatalf("sizeClass(%d) = %d but sizeClass(%d) = %d", n, c, c, sizeClass(c))
		}
		prev = c
	}
}

func TestConvertParts(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for _, sizes := range [][]int{{1}, {3, 5, 7}, {parallelConvert + 3}, {100000, 70001, 1, 250000, 9}} {
		for _, dt := range []model.DType{model.F32, model.BF16, model.F16} {
			var parts []part
			off := slabAlign
			for _, n := range sizes {
				data := make([]byte, n*dt.Size())
				for i := range data {
					data[i] = byte(r.Uint32())
				}
				parts = append(parts, part{src: model.HostTensor{Name: "t", DType: dt, Shape: []int{1, n}, Data: data}, off: off, n: n})
				off += alignUp(2 * n)
			}
			buf := make([]byte, off)
			convertParts(buf, parts)
			for _, pt := range parts {
				want := make([]byte, 2*pt.n)
				for i := 0; i < pt.n; i++ {
					binary.LittleEndian.PutUint16(want[2*i:], model.F32ToBF16(pt.src.At(i)))
				}
				if dt == model.BF16 {
					want = pt.src.Data // copied as is (NaN payloads included)
				}
				if got := buf[pt.off : pt.off+2*pt.n]; !bytes.Equal(got, want) {
					for i := 0; i < pt.n; i++ {
						if got[2*i] != want[2*i] || got[2*i+1] != want[2*i+1] {
							t.Fatalf("%s, sizes %v, n %d: element %d: got %#04x want %#04x (%g)", dt, sizes, pt.n, i,
								binary.LittleEndian.Uint16(got[2*i:]), binary.LittleEndian.Uint16(want[2*i:]), pt.src.At(i))
						}
					}
				}
			}
		}
	}
}
