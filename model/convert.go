package model

import (
	"encoding/binary"
	"math"
)

// BF16ToF32 widens a bfloat16 (the top 16 bits of a float32) exactly.
func BF16ToF32(u uint16) float32 { return math.Float32frombits(uint32(u) << 16) }

// F32ToBF16 rounds to the nearest bfloat16, ties to even, as torch's .to(torch.bfloat16) does.
func F32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 { // NaN stays a (quiet) NaN
		return uint16(u>>16) | 0x40
	}
	return uint16((u + 0x7fff + (u>>16)&1) >> 16)
}

// F16ToF32 converts IEEE half precision exactly (subnormals, infinities and NaN included).
func F16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0 && mant == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: normalise
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	case exp == 0x1f:
		return math.Float32frombits(sign | 0xff<<23 | mant<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// At returns element i of a host tensor as float32, whatever its dtype (little-endian data).
func (h HostTensor) At(i int) float32 {
	switch h.DType {
	case F32:
		return math.Float32frombits(binary.LittleEndian.Uint32(h.Data[4*i:]))
	case BF16:
		return BF16ToF32(binary.LittleEndian.Uint16(h.Data[2*i:]))
	default:
		return F16ToF32(binary.LittleEndian.Uint16(h.Data[2*i:]))
	}
}

// FirstNonFinite returns the index of the first NaN or infinite element of h, or -1 if every
// element is finite. One NaN in a LoRA factor or a gate turns every row that uses it into NaN
// logits, so loaders refuse such tensors by name. It scans eight bytes at a time (an adapter's
// worth of values in a few milliseconds): an element is not finite when its exponent bits are
// all ones, which for each lane is a zero in (x & exp) ^ exp.
func (h HostTensor) FirstNonFinite() int {
	size := h.DType.Size()
	var exp uint64
	switch h.DType {
	case F32:
		exp = 0x7f800000_7f800000
	case BF16:
		exp = 0x7f80_7f80_7f80_7f80
	case F16:
		exp = 0x7c00_7c00_7c00_7c00
	default:
		return -1
	}
	// hasZeroLane is the classic "has a zero byte" test widened to the lane size: exact for
	// whether any lane is zero (the lanes here never have their top bit set).
	lo, hi := uint64(0x00000001_00000001), uint64(0x80000000_80000000)
	if size == 2 {
		lo, hi = 0x0001_0001_0001_0001, 0x8000_8000_8000_8000
	}
	d := h.Data
	i := 0
	for ; i+32 <= len(d); i += 32 { // four words a round, one branch
		a := binary.LittleEndian.Uint64(d[i:])&exp ^ exp
		b := binary.LittleEndian.Uint64(d[i+8:])&exp ^ exp
		c := binary.LittleEndian.Uint64(d[i+16:])&exp ^ exp
		e := binary.LittleEndian.Uint64(d[i+24:])&exp ^ exp
		if ((a-lo)&^a|(b-lo)&^b|(c-lo)&^c|(e-lo)&^e)&hi != 0 {
			break // the word is found below
		}
	}
	for ; i+8 <= len(d); i += 8 {
		z := binary.LittleEndian.Uint64(d[i:])&exp ^ exp
		if (z-lo)&^z&hi != 0 {
			break // the lane is found element by element below
		}
	}
	for j := i / size; j < len(d)/size; j++ {
		if f := h.At(j); math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
			return j
		}
	}
	return -1
}
