package lorapack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Codec identifies a stream encoding.
type Codec uint8

const (
	Dense   Codec = 1 // dense-bf16
	Ternary Codec = 2 // ternary2
	Bitmap  Codec = 3
	Rice    Codec = 4
	Q8      Codec = 5 // group-wise int8, one bf16 group maximum per Param values
	Q4      Codec = 6 // group-wise int4 (two a byte), one bf16 group maximum per Param values
	RiceQ8  Codec = 7 // rice positions and signs plus an 8-bit magnitude per kept value
)

var codecNames = map[Codec]string{Dense: "dense-bf16", Ternary: "ternary2", Bitmap: "bitmap", Rice: "rice", Q8: "q8", Q4: "q4", RiceQ8: "rice-q8"}

func (c Codec) String() string {
	if n, ok := codecNames[c]; ok {
		return n
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// ParseCodec accepts the stream names and the CLI's short names (dense, ternary).
func ParseCodec(s string) (Codec, bool) {
	switch s {
	case "dense", "dense-bf16":
		return Dense, true
	case "ternary", "ternary2":
		return Ternary, true
	case "bitmap":
		return Bitmap, true
	case "rice":
		return Rice, true
	case "q8":
		return Q8, true
	case "q4":
		return Q4, true
	case "rice-q8":
		return RiceQ8, true
	}
	return 0, false
}

// HeaderSize is the fixed size of a stream header.
const HeaderSize = 20

// MaxElems bounds a tensor's element count so that kept counts and indices fit in uint32.
const MaxElems = math.MaxUint32

var magic = [2]byte{'L', 'X'}

// Header is a stream's fixed header, little-endian:
//
//	0  "LX"
//	2  codec
//	3  codec parameter (rice, rice-q8: k; q8, q4: the group size G; 0 otherwise)
//	4  rows    uint32
//	8  cols    uint32
//	12 kept    uint32 (sparse codecs: number of non-zero entries; dense, q8, q4: 0)
//	16 scale   float32 (sparse codecs; rice-q8: the largest kept |value|; dense, q8, q4: 0)
type Header struct {
	Codec      Codec
	Param      uint8
	Rows, Cols int
	Kept       int
	Scale      float32
}

// N is the element count.
func (h Header) N() int { return h.Rows * h.Cols }

// ErrCorrupt is wrapped by every decoding error.
var ErrCorrupt = errors.New("corrupt lorapack stream")

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

func (h Header) put(b []byte) {
	b[0], b[1], b[2], b[3] = magic[0], magic[1], byte(h.Codec), h.Param
	binary.LittleEndian.PutUint32(b[4:], uint32(h.Rows))
	binary.LittleEndian.PutUint32(b[8:], uint32(h.Cols))
	binary.LittleEndian.PutUint32(b[12:], uint32(h.Kept))
	binary.LittleEndian.PutUint32(b[16:], math.Float32bits(h.Scale))
}

// ParseHeader reads and checks a stream's header and its payload length, and returns the
// payload. A stream that passes has a payload of exactly the size its codec needs (rice: at
// least the sign bytes; the gap bits are checked while decoding).
func ParseHeader(s []byte) (Header, []byte, error) {
	if len(s) < HeaderSize {
		return Header{}, nil, corrupt("%d bytes, shorter than the %d-byte header", len(s), HeaderSize)
	}
	if s[0] != magic[0] || s[1] != magic[1] {
		return Header{}, nil, corrupt("bad magic %q", s[:2])
	}
	h := Header{
		Codec: Codec(s[2]), Param: s[3],
		Rows:  int(binary.LittleEndian.Uint32(s[4:])),
		Cols:  int(binary.LittleEndian.Uint32(s[8:])),
		Kept:  int(binary.LittleEndian.Uint32(s[12:])),
		Scale: math.Float32frombits(binary.LittleEndian.Uint32(s[16:])),
	}
	if _, ok := codecNames[h.Codec]; !ok {
		return Header{}, nil, corrupt("unknown codec %d", s[2])
	}
	if h.Rows == 0 || h.Cols == 0 || uint64(h.Rows)*uint64(h.Cols) > MaxElems {
		return Header{}, nil, corrupt("shape [%d, %d]", h.Rows, h.Cols)
	}
	n := h.N()
	if h.Kept > n {
		return Header{}, nil, corrupt("%d kept values in %d", h.Kept, n)
	}
	if f := float64(h.Scale); math.IsNaN(f) || math.IsInf(f, 0) {
		return Header{}, nil, corrupt("scale %v", h.Scale)
	}
	switch h.Codec {
	case Rice, RiceQ8:
		if h.Param > maxRiceK {
			return Header{}, nil, corrupt("rice parameter %d > %d", h.Param, maxRiceK)
		}
	case Q8, Q4:
		if !validGroup(int(h.Param)) {
			return Header{}, nil, corrupt("%v group size %d", h.Codec, h.Param)
		}
	default:
		if h.Param != 0 {
			return Header{}, nil, corrupt("%v with parameter %d", h.Codec, h.Param)
		}
	}
	if (h.Codec == Dense || h.Codec == Q8 || h.Codec == Q4) && (h.Kept != 0 || h.Scale != 0) {
		return Header{}, nil, corrupt("%v stream with kept %d scale %v", h.Codec, h.Kept, h.Scale)
	}
	// rice-q8's scale is the largest kept magnitude: positive when anything is kept, else 0.
	if h.Codec == RiceQ8 && ((h.Kept > 0) != (h.Scale > 0) || math.Signbit(float64(h.Scale))) {
		return Header{}, nil, corrupt("rice-q8 stream with kept %d scale %v", h.Kept, h.Scale)
	}
	p := s[HeaderSize:]
	want, exact := payloadSize(h)
	if (exact && len(p) != want) || len(p) < want {
		return Header{}, nil, corrupt("%v [%d, %d] payload is %d bytes, want %d", h.Codec, h.Rows, h.Cols, len(p), want)
	}
	return h, p, nil
}

// payloadSize is the payload length a header implies (for rice, the minimum: the sign bytes; for
// rice-q8, the sign and magnitude bytes).
func payloadSize(h Header) (size int, exact bool) {
	n := h.N()
	switch h.Codec {
	case Dense:
		return 2 * n, true
	case Ternary:
		return (n + 3) / 4, true
	case Bitmap:
		return (n+7)/8 + (h.Kept+7)/8, true
	case Q8, Q4:
		return quantPayload(h.Codec, n, int(h.Param)), true
	case RiceQ8:
		return (h.Kept+7)/8 + h.Kept, false
	}
	return (h.Kept + 7) / 8, false
}
