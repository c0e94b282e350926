package lorapack

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"unicode/utf8"

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

// The manifest itself (~100 KB for those 448 tensors) went through encoding/json's two scans of
// the whole document, its validity check and then its decoding walk, before any field was
// read: as long again as the entries. readManifest checks it once (jsonscan.Valid) and walks the form
// WriteContainer writes itself.

// readManifest decodes a manifest as json.Unmarshal does, to the same value or the same error:
// a valid document written the usual way is walked by fastManifest, anything else goes to
// encoding/json. FuzzManifestJSON holds the two to the same.
func readManifest(b []byte, m *Manifest) error {
	if utf8.Valid(b) && jsonscan.Valid(b) {
		if fastManifest(b, m) {
			return nil
		}
		*m = Manifest{}
	}
	return json.Unmarshal(b, m)
}

// manifestKeys are the manifest keys fastManifest reads (Global, set only by exact ComPEFT
// mode, is left to encoding/json).
var manifestKeys = []string{"format", "base_model", "target_modules", "use_rslora", "modules", "tensors", "peft_config"}

// fastManifest reads a manifest object whose keys are manifestKeys, each at most once and
// spelled exactly, with string format and base_model, a true or false use_rslora, objects for
// modules and tensors whose entries fastModuleInfo and fastTensorInfo read; it says no to
// anything else.
// b is valid UTF-8 JSON.
func fastManifest(b []byte, m *Manifest) bool {
	i := jsonscan.Space(b, 0)
	if i == len(b) || b[i] != '{' {
		return false
	}
	var seen [7]bool
	for i = jsonscan.Space(b, i+1); i < len(b) && b[i] == '"'; i = jsonscan.Next(b, i) {
		end := jsonscan.Value(b, i)
		key := jsonscan.Unquote(b[i:end])
		i = jsonscan.Space(b, jsonscan.Space(b, end)+1) // past the colon
		end = jsonscan.Value(b, i)
		v := b[i:end]
		field := slices.Index(manifestKeys, key)
		if field < 0 || seen[field] {
			return false
		}
		seen[field] = true
		switch key {
		case "format", "base_model":
			if v[0] != '"' {
				return false
			}
			if key == "format" {
				m.Format = jsonscan.Unquote(v)
			} else {
				m.BaseModel = jsonscan.Unquote(v)
			}
		case "target_modules":
			m.TargetModules = bytes.Clone(v)
		case "peft_config":
			m.PEFTConfig = bytes.Clone(v)
		case "use_rslora":
			switch string(v) {
			case "true":
				m.UseRSLoRA = true
			case "false":
				m.UseRSLoRA = false
			default:
				return false
			}
		case "modules":
			if m.Modules = fastMap(v, fastModuleInfo); m.Modules == nil {
				return false
			}
		case "tensors":
			if m.Tensors = fastMap(v, fastTensorInfo); m.Tensors == nil {
				return false
			}
		}
		i = end
	}
	return i < len(b) && b[i] == '}'
}

// fastMap reads a JSON object whose every value read says yes to, as a map (the last of a
// repeated key wins, as in encoding/json); nil if v is not an object or read says no to one.
func fastMap[T any](v []byte, read func([]byte) (T, bool)) map[string]T {
	if v[0] != '{' {
		return nil
	}
	out := map[string]T{}
	for j := jsonscan.Space(v, 1); j < len(v) && v[j] == '"'; j = jsonscan.Next(v, j) {
		e := jsonscan.Value(v, j)
		name := jsonscan.Unquote(v[j:e])
		j = jsonscan.Space(v, jsonscan.Space(v, e)+1) // past the colon
		e = jsonscan.Value(v, j)
		t, ok := read(v[j:e])
		if !ok {
			return nil
		}
		out[name], j = t, e
	}
	return out
}

// fastModuleInfo reads a ModuleInfo object as json.Marshal writes one: the keys rank, alpha
// and scale, each at most once, a rank of plain digits, numbers strconv reads at the fields'
// precision (as encoding/json reads them).
func fastModuleInfo(b []byte) (ModuleInfo, bool) {
	var mi ModuleInfo
	i := jsonscan.Space(b, 0)
	if i == len(b) || b[i] != '{' {
		return mi, false
	}
	var seen [3]bool
	for i = jsonscan.Space(b, i+1); i < len(b) && b[i] == '"'; i = jsonscan.Next(b, i) {
		key, end, ok := jsonscan.PlainString(b, i)
		if i = jsonscan.Space(b, end); !ok || i == len(b) || b[i] != ':' {
			return mi, false
		}
		i = jsonscan.Space(b, i+1)
		field := 0
		switch string(key) {
		case "rank":
			v, end, ok := uintAt(b, i, 63)
			if !ok {
				return mi, false
			}
			mi.Rank, i = int(v), end
		case "alpha", "scale":
			bits := 64
			if field = 1; key[0] == 's' {
				field, bits = 2, 32
			}
			tok, end := jsonscan.Number(b, i)
			v, err := strconv.ParseFloat(string(tok), bits)
			if len(tok) == 0 || err != nil {
				return mi, false
			}
			if field == 1 {
				mi.Alpha = v
			} else {
				mi.Scale = float32(v)
			}
			i = end
		default:
			return mi, false
		}
		if seen[field] {
			return mi, false
		}
		seen[field] = true
	}
	if i == len(b) || b[i] != '}' || jsonscan.Space(b, i+1) != len(b) {
		return mi, false
	}
	return mi, true
}
