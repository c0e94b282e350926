package lorapack

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/loraplex/loraplex/model"
)

// EncodeDense rounds every value to bfloat16 (nearest, ties to even, as torch does).
func EncodeDense(vals []float32, rows, cols int) ([]byte, error) {
	if err := checkShape(vals, rows, cols); err != nil {
		return nil, err
	}
	out := make([]byte, HeaderSize+2*len(vals))
	Header{Codec: Dense, Rows: rows, Cols: cols}.put(out)
	p := out[HeaderSize:]
	for i, v := range vals {
		binary.LittleEndian.PutUint16(p[2*i:], model.F32ToBF16(v))
	}
	return out, nil
}

// EncodeSparse writes a sparsified tensor with one of the sparse codecs.
func EncodeSparse(c Codec, s *Sparse) ([]byte, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	n := s.Rows * s.Cols
	if f := float64(s.Scale); math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("scale %v", s.Scale)
	}
	h := Header{Codec: c, Rows: s.Rows, Cols: s.Cols, Kept: len(s.Idx), Scale: s.Scale}
	switch c {
	case Ternary:
		out := make([]byte, HeaderSize+(n+3)/4)
		h.put(out)
		p := out[HeaderSize:]
		for j, i := range s.Idx {
			code := byte(1)
			if negBit(s.Neg, j) {
				code = 2
			}
			p[i/4] |= code << (2 * (i % 4))
		}
		return out, nil
	case Bitmap:
		out := make([]byte, HeaderSize+(n+7)/8+(len(s.Idx)+7)/8)
		h.put(out)
		p := out[HeaderSize:]
		for _, i := range s.Idx {
			p[i/8] |= 1 << (i % 8)
		}
		putSigns(p[(n+7)/8:], s)
		return out, nil
	case Rice:
		h.Param = riceParam(len(s.Idx), n)
		return encodeRice(h, s), nil
	}
	return nil, fmt.Errorf("%v is not a sparse codec", c)
}

func negBit(neg []uint64, j int) bool { return neg[j/64]>>(j%64)&1 != 0 }

func putSigns(dst []byte, s *Sparse) {
	for j := range s.Idx {
		if negBit(s.Neg, j) {
			dst[j/8] |= 1 << (j % 8)
		}
	}
}

// SparseSize is the stream size a sparse codec (or rice-q8) gives, without encoding.
func SparseSize(c Codec, s *Sparse) int {
	n, kept := s.Rows*s.Cols, len(s.Idx)
	switch c {
	case Ternary:
		return HeaderSize + (n+3)/4
	case Bitmap:
		return HeaderSize + (n+7)/8 + (kept+7)/8
	case Rice:
		return HeaderSize + (kept+7)/8 + int((riceBits(s.Idx, riceParam(kept, n))+7)/8)
	case RiceQ8:
		return SparseSize(Rice, s) + kept
	}
	return -1
}

// Smallest returns the sparse codec with the smallest stream for s (they all decode alike).
func Smallest(s *Sparse) Codec {
	best := Ternary
	for _, c := range []Codec{Bitmap, Rice} {
		if SparseSize(c, s) < SparseSize(best, s) {
			best = c
		}
	}
	return best
}
