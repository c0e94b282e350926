package lorapack

import (
	"encoding/binary"
	"math"
	"math/bits"

	"github.com/loraplex/loraplex/model"
)

// DecodeF32 decodes a stream into dst, which must have exactly rows*cols elements.
func DecodeF32(stream []byte, dst []float32) error { return decodeF32(stream, dst, false) }

// DecodeBF16 decodes a stream into dst as bfloat16 bit patterns (the scale of a sparse stream is
// rounded to the nearest bfloat16, a relative change below 2^-8).
func DecodeBF16(stream []byte, dst []uint16) error { return decodeBF16(stream, dst, false) }

// zeroed tells the decoders that dst is known to be all zeros (a fresh allocation), which saves
// the sparse codecs a pass over the output: on the load path that pass costs about as much as
// the decoding itself.
func decodeF32(stream []byte, dst []float32, zeroed bool) error {
	h, p, err := ParseHeader(stream)
	if err != nil {
		return err
	}
	if len(dst) != h.N() {
		return corrupt("[%d, %d] stream into %d values", h.Rows, h.Cols, len(dst))
	}
	switch h.Codec {
	case Q8, Q4:
		return decodeQuant(h, p, dst, nil)
	case RiceQ8:
		return decodeRiceQ8(h, p, dst, zeroed)
	case Dense:
		p = p[:2*len(dst)]
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(p[2*i])<<16 | uint32(p[2*i+1])<<24)
		}
		return nil
	}
	return decodeSparse(h, p, dst, h.Scale, -h.Scale, zeroed)
}

func decodeBF16(stream []byte, dst []uint16, zeroed bool) error {
	h, p, err := ParseHeader(stream)
	if err != nil {
		return err
	}
	if len(dst) != h.N() {
		return corrupt("[%d, %d] stream into %d values", h.Rows, h.Cols, len(dst))
	}
	switch h.Codec {
	case Q8, Q4:
		return decodeQuant(h, p, nil, dst)
	case RiceQ8:
		return decodeRiceQ8(h, p, dst, zeroed)
	case Dense:
		copy(asBytes(dst), p) // the payload is little-endian bf16 already
		return nil
	}
	b := model.F32ToBF16(h.Scale)
	return decodeSparse(h, p, dst, b, b^0x8000, zeroed)
}

func decodeSparse[T any](h Header, p []byte, dst []T, pos, neg T, zeroed bool) error {
	if h.Codec == Ternary {
		return decodeTernary(h, p, dst, pos, neg)
	}
	if !zeroed {
		clear(dst)
	}
	if h.Codec == Bitmap {
		return decodeBitmap(h, p, dst, pos, neg)
	}
	return decodeRice(h, p, dst, pos, neg)
}

// decodeTernary expands 4 values per byte through a 256-entry table. Code 3 is invalid; rather
// than branch per byte, the loop ORs b & b>>1 together and checks once at the end.
func decodeTernary[T any](h Header, p []byte, dst []T, pos, neg T) error {
	var zero T
	codes := [4]T{zero, pos, neg, zero}
	var lut [256][4]T
	for b := range lut {
		for j := range 4 {
			lut[b][j] = codes[b>>(2*j)&3]
		}
	}
	n := len(dst)
	full := n / 4
	var bad byte
	kept := 0
	for i, b := range p[:full] {
		bad |= b & (b >> 1)
		kept += bits.OnesCount8((b | b>>1) & 0x55)
		d := dst[4*i : 4*i+4 : 4*i+4]
		l := &lut[b]
		d[0], d[1], d[2], d[3] = l[0], l[1], l[2], l[3]
	}
	if rest := n - 4*full; rest > 0 {
		b := p[full]
		if b>>(2*rest) != 0 {
			return corrupt("ternary padding bits are set")
		}
		bad |= b & (b >> 1)
		kept += bits.OnesCount8((b | b>>1) & 0x55)
		for j := range rest {
			dst[4*full+j] = lut[b][j]
		}
	}
	if bad&0x55 != 0 {
		return corrupt("ternary code 3")
	}
	if kept != h.Kept {
		return corrupt("ternary stream has %d non-zeros, header says %d", kept, h.Kept)
	}
	return nil
}

// decodeBitmap walks the kept bits a 64-bit word at a time, so the cost follows the kept count,
// not the element count (dst was cleared by the caller).
func decodeBitmap[T any](h Header, p []byte, dst []T, pos, neg T) error {
	n := len(dst)
	mb := (n + 7) / 8
	bitmap, signs := p[:mb], p[mb:]
	j := 0
	// Signs are random: a branch on them mispredicts half the time, an indexed load never.
	vals := [2]T{pos, neg}
	for wi := 0; wi*8 < mb; wi++ {
		var w uint64
		if wi*8+8 <= mb {
			w = binary.LittleEndian.Uint64(bitmap[wi*8:])
		} else {
			w = peek(bitmap, uint64(wi)*64)
		}
		for w != 0 {
			i := wi*64 + bits.TrailingZeros64(w)
			w &= w - 1
			if i >= n || j >= h.Kept {
				return corrupt("bitmap has bits past %d values or more than %d kept", n, h.Kept)
			}
			dst[i] = vals[signs[j/8]>>(j%8)&1]
			j++
		}
	}
	if j != h.Kept {
		return corrupt("bitmap has %d kept values, header says %d", j, h.Kept)
	}
	return checkSignPad(signs, h.Kept)
}

// Decode decodes a stream into fresh float32 values, refusing streams of more than maxElems
// elements (the only allocation sized by the input).
func Decode(stream []byte, maxElems int) (Header, []float32, error) {
	h, _, err := ParseHeader(stream)
	if err != nil {
		return Header{}, nil, err
	}
	if h.N() > maxElems {
		return Header{}, nil, corrupt("[%d, %d] exceeds the %d-element limit", h.Rows, h.Cols, maxElems)
	}
	dst := make([]float32, h.N())
	if err := DecodeF32(stream, dst); err != nil {
		return Header{}, nil, err
	}
	return h, dst, nil
}

// Values returns what a sparse tensor decodes to, for tests and error measurements.
func (s *Sparse) Values() []float32 {
	out := make([]float32, s.Rows*s.Cols)
	for j, i := range s.Idx {
		out[i] = s.Scale
		if negBit(s.Neg, j) {
			out[i] = -s.Scale
		}
	}
	return out
}
