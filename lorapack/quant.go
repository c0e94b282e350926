package lorapack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"slices"

	"github.com/loraplex/loraplex/model"
)

// Codecs that keep magnitudes.
//
// q8 and q4 are dense group-wise symmetric quantization. The row-major values are cut into groups
// of G consecutive values (G, the header's parameter, a power of two from 16 to 128; the last
// group holds the n mod G left over). A lora_A factor [r, in] has in a multiple of G, so its
// groups lie along a row; a lora_B factor [out, r] with r < G has groups of G/r whole rows. Each
// group stores its largest |value| M rounded up to bfloat16, and each value as the integer
// k = round(v * Q / M) in [-Q, Q], Q = 127 (q8, one byte) or 7 (q4, two's complement nibbles,
// low nibble first). A value decodes to M * k / Q (rounded once to float32), so
//
//   - |v - decoded| <= M / (2Q), half a step, for every value of the group;
//   - the value at the group's maximum decodes exactly when it is a bfloat16 (M is then that
//     value, and k = +-Q);
//   - a group of zeros decodes to zeros.
//
// Payload: the ceil(n/G) group maxima (bf16, little-endian), then the codes (n bytes for q8,
// ceil(n/2) for q4; an odd count leaves the last high nibble 0). Bits per value: 8 + 16/G for
// q8 (8.5 at G = 32, 1.9x smaller than bf16), 4 + 16/G for q4 (4.5 at G = 32: 3.6x smaller;
// 4.25 at G = 64: 3.8x). Codes -128 (q8) and -8 (q4) are never written and are refused.
//
// rice-q8 is the rice codec (positions and signs of the kept values, see rice.go) plus one byte
// per kept value after the gap bits: its magnitude m in [1, 255], which decodes to
// Scale * m / 255 with Scale (the header's) the largest kept |value|. Kept values keep their
// sign and stay non-zero (m >= 1); |v - decoded| <= Scale / 510 except for kept values below
// Scale / 510, which decode to Scale / 255.

// MaxGroup is the largest q8 / q4 group size.
const MaxGroup = 128

// DefaultGroup is the group size lorapack uses unless told otherwise.
const DefaultGroup = 32

func validGroup(g int) bool { return g >= 16 && g <= MaxGroup && g&(g-1) == 0 }

// quantMax is Q, the largest code magnitude.
func quantMax(c Codec) int {
	if c == Q4 {
		return 7
	}
	return 127
}

func quantPayload(c Codec, n, g int) int {
	ng := (n + g - 1) / g
	if c == Q4 {
		return 2*ng + (n+1)/2
	}
	return 2*ng + n
}

// QuantSize is the stream size of an n-value tensor in q8 or q4 with group size g.
func QuantSize(c Codec, n, g int) int { return HeaderSize + quantPayload(c, n, g) }

// BitsPerValue is the average stored bits per value of q8 / q4 with group size g, ignoring the
// last group's remainder and the header.
func BitsPerValue(c Codec, g int) float64 {
	b := 8.0
	if c == Q4 {
		b = 4
	}
	return b + 16/float64(g)
}

// bf16Ceil is the smallest bfloat16 >= m (m >= 0 and finite).
func bf16Ceil(m float32) uint16 {
	b := model.F32ToBF16(m)
	if model.BF16ToF32(b) < m {
		b++
	}
	return b
}

// EncodeQuant writes vals as q8 or q4 with group size group. Non-finite values are refused, and
// so are values above the largest bfloat16 (3.39e38).
func EncodeQuant(c Codec, vals []float32, rows, cols, group int) ([]byte, error) {
	if c != Q8 && c != Q4 {
		return nil, fmt.Errorf("%v is not a quantizing codec", c)
	}
	if !validGroup(group) {
		return nil, fmt.Errorf("group size %d: want a power of two from 16 to %d", group, MaxGroup)
	}
	if err := checkShape(vals, rows, cols); err != nil {
		return nil, err
	}
	n := len(vals)
	ng := (n + group - 1) / group
	out := make([]byte, QuantSize(c, n, group))
	Header{Codec: c, Param: uint8(group), Rows: rows, Cols: cols}.put(out)
	scales, q := out[HeaderSize:HeaderSize+2*ng], out[HeaderSize+2*ng:]
	qmax := float64(quantMax(c))
	for gi := range ng {
		lo, hi := gi*group, min(n, (gi+1)*group)
		var m float32
		for _, v := range vals[lo:hi] {
			m = max(m, float32(math.Abs(float64(v))))
		}
		mb := bf16Ceil(m)
		if mb >= 0x7f80 {
			return nil, fmt.Errorf("value %v is beyond the bfloat16 range", m)
		}
		binary.LittleEndian.PutUint16(scales[2*gi:], mb)
		M := float64(model.BF16ToF32(mb))
		if M == 0 {
			continue // codes stay 0
		}
		for i := lo; i < hi; i++ {
			k := int(math.Round(float64(vals[i]) * qmax / M))
			k = min(max(k, -int(qmax)), int(qmax))
			if c == Q8 {
				q[i] = byte(int8(k))
			} else {
				q[i/2] |= byte(k&15) << (4 * (i % 2))
			}
		}
	}
	return out, nil
}

// hasNibble8 reports whether any nibble of p is 8 (the q4 code -8), 16 nibbles at a time: x has a
// zero nibble exactly when (x - 0x11..1) & ^x & 0x88..8 is non-zero.
func hasNibble8(p []byte) bool {
	const ones, highs = 0x1111111111111111, 0x8888888888888888
	var acc uint64
	i := 0
	for ; i+8 <= len(p); i += 8 {
		x := binary.LittleEndian.Uint64(p[i:]) ^ highs
		acc |= (x - ones) &^ x & highs
	}
	for _, b := range p[i:] {
		if b&15 == 8 || b>>4 == 8 {
			return true
		}
	}
	return acc != 0
}

// decodeQuant decodes a q8 / q4 payload into f32 (if not nil) or bf16. Values are computed in
// float32 and, for bf16, rounded once more, so both outputs agree.
func decodeQuant(h Header, p []byte, f32 []float32, bf []uint16) error {
	n, g := h.N(), int(h.Param)
	ng := (n + g - 1) / g
	scales, q := p[:2*ng], p[2*ng:]
	qmax := quantMax(h.Codec)
	if h.Codec == Q4 {
		if n%2 == 1 && q[n/2]>>4 != 0 {
			return corrupt("q4 padding nibble is set")
		}
		if hasNibble8(q) {
			return corrupt("q4 stream holds the code -8")
		}
	}
	for gi := range ng {
		mb := binary.LittleEndian.Uint16(scales[2*gi:])
		if mb&0x8000 != 0 || mb&0x7f80 == 0x7f80 {
			return corrupt("%v group %d maximum %#04x is negative or not finite", h.Codec, gi, mb)
		}
		// step * k is M * k / Q to within 2^-52 relative, and M * k / Q is never that close to
		// a float32 rounding boundary (Q is odd), so the float32 result is M * k / Q correctly
		// rounded, and exactly M at k = Q.
		step := float64(model.BF16ToF32(mb)) / float64(qmax)
		lo, hi := gi*g, min(n, (gi+1)*g)
		var codes []byte
		if h.Codec == Q8 {
			codes = q[lo:hi]
			if bytes.IndexByte(codes, 0x80) >= 0 {
				return corrupt("q8 group %d holds the code -128", gi)
			}
			if f32 != nil {
				d := f32[lo:hi:hi]
				for j, b := range codes {
					d[j] = float32(step * float64(int8(b)))
				}
			} else {
				d := bf[lo:hi:hi]
				for j, b := range codes {
					d[j] = model.F32ToBF16(float32(step * float64(int8(b))))
				}
			}
		} else {
			// g is even, so every group starts on a byte; only the last may end mid-byte.
			codes = q[lo/2 : (hi+1)/2]
			pairs := (hi - lo) / 2
			if f32 != nil {
				d := f32[lo:hi:hi]
				for j, b := range codes[:pairs] {
					d2 := d[2*j : 2*j+2 : 2*j+2]
					d2[0] = float32(step * float64(int8(b<<4)>>4))
					d2[1] = float32(step * float64(int8(b)>>4))
				}
				if (hi-lo)%2 == 1 {
					d[hi-lo-1] = float32(step * float64(int8(codes[pairs]<<4)>>4))
				}
			} else {
				d := bf[lo:hi:hi]
				for j, b := range codes[:pairs] {
					d2 := d[2*j : 2*j+2 : 2*j+2]
					d2[0] = model.F32ToBF16(float32(step * float64(int8(b<<4)>>4)))
					d2[1] = model.F32ToBF16(float32(step * float64(int8(b)>>4)))
				}
				if (hi-lo)%2 == 1 {
					d[hi-lo-1] = model.F32ToBF16(float32(step * float64(int8(codes[pairs]<<4)>>4)))
				}
			}
		}
		if mb == 0 && slices.ContainsFunc(codes, func(b byte) bool { return b != 0 }) {
			return corrupt("%v group %d has maximum 0 and non-zero codes", h.Codec, gi)
		}
	}
	return nil
}

// EncodeRiceQ8 writes the kept set of s (positions and signs, as EncodeSparse with Rice) with
// an 8-bit magnitude per kept value taken from vals, the tensor s was made from. s.Scale is not
// used: the stream's scale is the largest kept |value|.
func EncodeRiceQ8(s *Sparse, vals []float32) ([]byte, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := checkShape(vals, s.Rows, s.Cols); err != nil {
		return nil, err
	}
	var scale float32
	for j, i := range s.Idx {
		v := vals[i]
		if v == 0 || math.Signbit(float64(v)) != negBit(s.Neg, j) {
			return nil, fmt.Errorf("kept value %d (%v) is zero or has the other sign", i, v)
		}
		scale = max(scale, float32(math.Abs(float64(v))))
	}
	h := Header{Codec: RiceQ8, Rows: s.Rows, Cols: s.Cols, Kept: len(s.Idx), Scale: scale}
	h.Param = riceParam(len(s.Idx), s.Rows*s.Cols)
	out := encodeRice(h, s)
	for _, i := range s.Idx {
		m := math.Round(255 * math.Abs(float64(vals[i])) / float64(scale))
		out = append(out, byte(min(max(m, 1), 255)))
	}
	return out, nil
}

// riceQ8LUT is what each magnitude byte decodes to (index 0 unused).
func riceQ8LUT(scale float32) *[256]float32 {
	var lut [256]float32
	for m := 1; m < 256; m++ {
		lut[m] = float32(float64(scale) * float64(m) / 255)
	}
	return &lut
}

// decodeRiceQ8 places +-1 at the kept positions with the rice decoder, then replaces them, in
// index order, by their magnitudes.
func decodeRiceQ8[T float32 | uint16](h Header, p []byte, dst []T, zeroed bool) error {
	if !zeroed {
		clear(dst)
	}
	kept := h.Kept
	mags := p[len(p)-kept:]
	lut := riceQ8LUT(h.Scale)
	var err error
	switch d := any(dst).(type) {
	case []float32:
		if err = decodeRice(h, p[:len(p)-kept], d, 1, -1); err != nil {
			return err
		}
		j := 0
		for i, v := range d {
			if v == 0 {
				continue
			}
			if j >= kept || mags[j] == 0 {
				return corrupt("rice-q8 magnitude %d is 0", j)
			}
			d[i] = float32(math.Copysign(float64(lut[mags[j]]), float64(v)))
			j++
		}
	case []uint16:
		var lb [256]uint16
		for m := range lb {
			lb[m] = model.F32ToBF16(lut[m])
		}
		if err = decodeRice(h, p[:len(p)-kept], d, 0x3f80, 0xbf80); err != nil {
			return err
		}
		j := 0
		for i, v := range d {
			if v == 0 {
				continue
			}
			if j >= kept || mags[j] == 0 {
				return corrupt("rice-q8 magnitude %d is 0", j)
			}
			d[i] = lb[mags[j]] | v&0x8000
			j++
		}
	}
	return nil
}

// check validates a Sparse before encoding.
func (s *Sparse) check() error {
	n := s.Rows * s.Cols
	if s.Rows <= 0 || s.Cols <= 0 || uint64(s.Rows)*uint64(s.Cols) > MaxElems || len(s.Idx) > n || len(s.Neg) < (len(s.Idx)+63)/64 {
		return fmt.Errorf("sparse tensor [%d, %d] with %d kept values is inconsistent", s.Rows, s.Cols, len(s.Idx))
	}
	for j, i := range s.Idx {
		if int(i) >= n || (j > 0 && i <= s.Idx[j-1]) {
			return fmt.Errorf("kept indices must be ascending and below %d", n)
		}
	}
	return nil
}
