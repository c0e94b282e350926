package lorapack

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
)

// maxRiceK bounds the Rice parameter; gaps never exceed 2^32, so larger k gains nothing.
const maxRiceK = 30

// riceParam chooses k from the density p = kept/n. Gaps between kept indices of a random
// sparsity pattern are geometric with parameter p, for which the best Rice parameter is
// k = max(0, ceil(log2(log(phi-1) / log(1-p)))) (phi the golden ratio; Kiely 2004). Real
// patterns cluster somewhat, which this ignores: it costs a few percent at most.
func riceParam(kept, n int) uint8 {
	if kept == 0 || kept >= n {
		return 0
	}
	p := float64(kept) / float64(n)
	k := math.Ceil(math.Log2(math.Log((math.Sqrt(5)-1)/2) / math.Log1p(-p)))
	return uint8(min(max(k, 0), maxRiceK))
}

// riceBits is the gap bitstream's length: per gap g, g>>k zeros, a one, then k low bits.
func riceBits(idx []uint32, k uint8) uint64 {
	var total uint64
	prev := int64(-1)
	for _, i := range idx {
		g := uint64(int64(i) - prev - 1)
		total += g>>k + 1 + uint64(k)
		prev = int64(i)
	}
	return total
}

// Payload: sign bytes (ceil(kept/8)), then the gap bitstream, least significant bit first.
func encodeRice(h Header, s *Sparse) []byte {
	kept := len(s.Idx)
	signBytes := (kept + 7) / 8
	out := make([]byte, HeaderSize+signBytes+int((riceBits(s.Idx, h.Param)+7)/8))
	h.put(out)
	putSigns(out[HeaderSize:], s)
	w := bitWriter{buf: out[HeaderSize+signBytes:]}
	k := uint(h.Param)
	prev := int64(-1)
	for _, i := range s.Idx {
		g := uint64(int64(i) - prev - 1)
		w.zeros(g >> k)
		w.write(1|(g&(1<<k-1))<<1, k+1)
		prev = int64(i)
	}
	return out
}

type bitWriter struct {
	buf []byte
	pos uint64 // in bits
}

// write appends the low n (<= 32) bits of v.
func (w *bitWriter) write(v uint64, n uint) {
	for n > 0 {
		byteI, off := w.pos/8, uint(w.pos%8)
		take := min(n, 8-off)
		w.buf[byteI] |= byte(v&(1<<take-1)) << off
		v >>= take
		n -= take
		w.pos += uint64(take)
	}
}

func (w *bitWriter) zeros(n uint64) { w.pos += n } // the buffer starts zeroed

// peek returns up to 57 bits starting at bit pos (zeros past the end).
func peek(buf []byte, pos uint64) uint64 {
	i := pos / 8
	if i+8 <= uint64(len(buf)) {
		return binary.LittleEndian.Uint64(buf[i:]) >> (pos % 8)
	}
	var tmp [8]byte
	if i < uint64(len(buf)) {
		copy(tmp[:], buf[i:])
	}
	return binary.LittleEndian.Uint64(tmp[:]) >> (pos % 8)
}

// decodeRice scatters pos / neg at the kept indices of a zeroed dst. The common case, a gap
// whose unary part, stop bit and k low bits fit in one 64-bit load, takes one load and no loop;
// longer gaps and the last bytes of the stream go through riceSlow.
func decodeRice[T any](h Header, p []byte, dst []T, pos, neg T) error {
	kept := h.Kept
	signs := p[:(kept+7)/8]
	gaps := p[len(signs):]
	totalBits := uint64(len(gaps)) * 8
	n := uint64(len(dst))
	k := uint64(h.Param)
	mask := uint64(1)<<k - 1
	var bp, next uint64    // bit position; smallest index the next kept entry may have
	var sw uint64          // current 64 signs
	vals := [2]T{pos, neg} // indexed by sign: a branch on random signs mispredicts half the time
	for j := 0; j < kept; j++ {
		if j%64 == 0 {
			sw = peek(signs, uint64(j))
		}
		var g uint64
		if bi := bp >> 3; bi+8 <= uint64(len(gaps)) {
			w := binary.LittleEndian.Uint64(gaps[bi:]) >> (bp & 7)
			if tz := uint64(bits.TrailingZeros64(w)); tz+1+k <= 57 {
				g = tz<<k | (w>>(tz+1))&mask
				bp += tz + 1 + k
				goto place
			}
		}
		{
			var err error
			if g, bp, err = riceSlow(gaps, bp, k, n, totalBits); err != nil {
				return fmt.Errorf("gap %d: %w", j, err)
			}
		}
	place:
		if next+g >= n {
			return corrupt("rice gap %d puts an index past %d values", j, n)
		}
		i := next + g
		dst[i] = vals[sw&1]
		sw >>= 1
		next = i + 1
	}
	if bp > totalBits || (bp+7)/8 != uint64(len(gaps)) || (bp%8 != 0 && gaps[len(gaps)-1]>>(bp%8) != 0) {
		return corrupt("rice stream ends at bit %d of %d", bp, totalBits)
	}
	return checkSignPad(signs, kept)
}

// riceSlow decodes one gap at any position: unary runs longer than a load, and the stream's end.
func riceSlow(gaps []byte, bp, k, n, totalBits uint64) (g, newBP uint64, err error) {
	var q uint64
	for {
		w := peek(gaps, bp)
		if tz := uint64(bits.TrailingZeros64(w)); w != 0 && tz < 57 {
			q += tz
			bp += tz + 1
			break
		}
		q += 56
		bp += 56
		if q > n || bp > totalBits {
			return 0, 0, corrupt("rice gap runs past the stream")
		}
	}
	g = q<<k | peek(gaps, bp)&(1<<k-1)
	bp += k
	if bp > totalBits || q > n {
		return 0, 0, corrupt("rice gap runs past the stream")
	}
	return g, bp, nil
}

// checkSignPad rejects set bits after the last sign, so that every stream has one encoding.
func checkSignPad(signs []byte, kept int) error {
	if kept%8 != 0 && signs[len(signs)-1]>>(kept%8) != 0 {
		return corrupt("padding bits after the last sign are set")
	}
	return nil
}
