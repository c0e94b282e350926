package lorapack

import (
	"encoding/json"
	"strconv"

	"github.com/loraplex/loraplex/internal/jsonscan"
)

// A manifest lists every tensor (448 for a rank-16 adapter on all projections of an 8B model),
// and encoding/json decoding each TensorInfo field by reflection was a third of opening a
// file: the largest part of the loader's own path once the streams were read in parallel. The
// manifest is written by WriteContainer (json.Marshal), so TensorInfo reads an entry in that
// form itself and leaves any other form to encoding/json.

// tensorInfoJSON is TensorInfo without its UnmarshalJSON: what encoding/json decodes.
type tensorInfoJSON TensorInfo

// UnmarshalJSON reads an entry written as json.Marshal writes one directly (fastTensorInfo),
// and any other through encoding/json, so the result is always what encoding/json gives
// (FuzzTensorInfoJSON holds the fast path to that).
func (t *TensorInfo) UnmarshalJSON(b []byte) error {
	if v, ok := fastTensorInfo(b); ok {
		*t = v
		return nil
	}
	return json.Unmarshal(b, (*tensorInfoJSON)(t))
}

// fastTensorInfo reads a TensorInfo object whose keys are TensorInfo's own, each at most once,
// with plain strings, unsigned integers written as digits that fit their fields, a density
// strconv reads, and a shape of exactly two integers. b is valid JSON (encoding/json checked
// the whole manifest before calling UnmarshalJSON).
func fastTensorInfo(b []byte) (TensorInfo, bool) {
	var t TensorInfo
	i := jsonscan.Space(b, 0)
	if i == len(b) || b[i] != '{' {
		return t, false
	}
	var seen [8]bool
	for i = jsonscan.Space(b, i+1); i < len(b) && b[i] == '"'; i = jsonscan.Next(b, i) {
		key, end, ok := jsonscan.PlainString(b, i)
		if i = jsonscan.Space(b, end); !ok || i == len(b) || b[i] != ':' {
			return t, false
		}
		i = jsonscan.Space(b, i+1)
		field := -1
		switch string(key) {
		case "codec", "dtype":
			s, end, ok := jsonscan.PlainString(b, i)
			if !ok {
				return t, false
			}
			if key[0] == 'c' {
				field, t.Codec = 0, string(s)
			} else {
				field, t.DType = 1, string(s)
			}
			i = end
		case "density":
			tok, end := jsonscan.Number(b, i)
			v, err := strconv.ParseFloat(string(tok), 64)
			if len(tok) == 0 || err != nil {
				return t, false
			}
			field, t.Density, i = 2, v, end
		case "kept", "bytes", "group", "crc32c":
			bits, dst := 63, &t.Kept
			switch key[0] {
			case 'k':
				field = 3
			case 'b':
				field, dst = 4, &t.Bytes
			case 'g':
				field, dst = 5, &t.Group
			default:
				field, bits = 6, 32
			}
			v, end, ok := uintAt(b, i, bits)
			if !ok {
				return t, false
			}
			if field == 6 {
				t.CRC32C = uint32(v)
			} else {
				*dst = int(v)
			}
			i = end
		case "shape":
			if i == len(b) || b[i] != '[' {
				return t, false
			}
			i = jsonscan.Space(b, i+1)
			for d := range 2 {
				v, end, ok := uintAt(b, i, 63)
				if !ok {
					return t, false
				}
				t.Shape[d] = int(v)
				if i = jsonscan.Space(b, end); d == 0 {
					if i == len(b) || b[i] != ',' {
						return t, false
					}
					i = jsonscan.Space(b, i+1)
				}
			}
			if i == len(b) || b[i] != ']' {
				return t, false
			}
			field, i = 7, i+1
		default:
			return t, false
		}
		if seen[field] {
			return t, false
		}
		seen[field] = true
	}
	if i == len(b) || b[i] != '}' || jsonscan.Space(b, i+1) != len(b) {
		return t, false
	}
	return t, true
}

// uintAt reads an unsigned integer of at most bits bits written as plain digits at b[i].
func uintAt(b []byte, i, bits int) (uint64, int, bool) {
	d, end := jsonscan.Digits(b, i)
	if len(d) == 0 || (end < len(b) && (b[end] == '.' || b[end] == 'e' || b[end] == 'E')) {
		return 0, i, false
	}
	v, err := strconv.ParseUint(string(d), 10, bits)
	return v, end, err == nil
}
