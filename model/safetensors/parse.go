package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/loraplex/loraplex/internal/jsonscan"
)

// MaxHeaderSize caps the JSON header, as the reference implementation does (100 MB): a corrupt
// or hostile length must not make us parse, or fault in, gigabytes of "JSON".
const MaxHeaderSize = 100_000_000

// metadataKey is the reserved header entry holding free-form string metadata.
const metadataKey = "__metadata__"

// Tensor is one tensor of a file. DType is the safetensors dtype string as written ("BF16",
// "F8_E4M3", ...). Data aliases the file's read-only mapping (or the bytes given to Parse): do
// not write to it and do not keep it past Close.
type Tensor struct {
	Name  string
	DType string
	Shape []int
	Data  []byte
}

// File is one parsed safetensors file.
type File struct {
	path     string
	tensors  map[string]Tensor
	names    []string // sorted
	metadata map[string]string
	unmap    func() error // releases the mapping; nil for Parse
}

// rawInfo is a header entry as written. Numbers stay json.Number so that non-integers, negative
// values and values beyond int64 are reported instead of silently truncated.
type rawInfo struct {
	DType   *string        `json:"dtype"`
	Shape   *[]json.Number `json:"shape"`
	Offsets *[]json.Number `json:"data_offsets"`
}

// span is a validated tensor's byte range within the data buffer, for the coverage check.
type span struct {
	name       string
	begin, end uint64
}

// Parse validates a safetensors file held in memory. The returned File's tensors alias data.
// path is used only in error messages and Path.
func Parse(path string, data []byte) (*File, error) {
	if len(data) < 8 {
		return nil, formatErr(path, "", "file is %d bytes, shorter than the 8-byte header length", len(data))
	}
	n := binary.LittleEndian.Uint64(data[:8])
	if n > MaxHeaderSize {
		return nil, formatErr(path, "", "header length %d exceeds the %d-byte limit", n, MaxHeaderSize)
	}
	if n > uint64(len(data)-8) {
		return nil, formatErr(path, "", "header length %d runs past the end of the %d-byte file", n, len(data))
	}
	header, buf := data[8:8+n], data[8+n:]
	if !utf8.Valid(header) {
		return nil, formatErr(path, "", "header is not valid UTF-8")
	}
	if !jsonscan.Valid(header) {
		return nil, formatErr(path, "", "header is not valid JSON")
	}
	f := &File{path: path, tensors: map[string]Tensor{}}
	infos, err := decodeHeader(path, header, f)
	if err != nil {
		return nil, err
	}
	spans := make([]span, 0, len(infos))
	for _, e := range infos {
		t, sp, err := validateTensor(path, e.name, e.info, uint64(len(buf)))
		if err != nil {
			return nil, err
		}
		t.Data = buf[sp.begin:sp.end:sp.end]
		f.tensors[e.name] = t
		f.names = append(f.names, e.name)
		spans = append(spans, sp)
	}
	if err := checkCoverage(path, spans, uint64(len(buf))); err != nil {
		return nil, err
	}
	slices.Sort(f.names)
	return f, nil
}

type namedInfo struct {
	name string
	info rawInfo
}

// decodeHeader walks the top-level object member by member so that duplicate names, which a
// map-based decode would silently collapse, are reported. header is valid JSON (Parse checked
// it), so the walk only finds where each member starts and ends: the checks are the decoders'
// (headerEntry, or encoding/json for anything it does not read itself).
func decodeHeader(path string, header []byte, f *File) ([]namedInfo, error) {
	i := jsonscan.Space(header, 0)
	if i == len(header) || header[i] != '{' {
		return nil, formatErr(path, "", "header is not a JSON object")
	}
	seen := map[string]bool{}
	var out []namedInfo
	for i = jsonscan.Space(header, i+1); i < len(header) && header[i] == '"'; {
		end := jsonscan.Value(header, i)
		name := jsonscan.Unquote(header[i:end])
		if seen[name] {
			return nil, formatErr(path, name, "listed twice in the header")
		}
		seen[name] = true
		i = jsonscan.Space(header, jsonscan.Space(header, end)+1) // past the colon
		end = jsonscan.Value(header, i)
		value := header[i:end]
		i = jsonscan.Next(header, end)
		if name == metadataKey {
			md, ok := stringMap(value)
			if !ok {
				if err := json.Unmarshal(value, &md); err != nil {
					return nil, formatErr(path, "", "__metadata__ must map strings to strings: %v", err)
				}
			}
			f.metadata = md
			continue
		}
		info, ok := headerEntry(value)
		if !ok {
			if err := json.Unmarshal(value, &info); err != nil {
				return nil, formatErr(path, name, "bad header entry: %v", err)
			}
		}
		out = append(out, namedInfo{name, info})
	}
	return out, nil
}

// headerEntry reads a header entry written the way every safetensors writer writes one:
// exactly the keys dtype, shape and data_offsets, each once, a dtype string without escapes and
// arrays of digits. It gives what encoding/json gives for such an entry (FuzzHeaderEntry
// holds it to that) at a fraction of the cost; for anything else it says no and the caller
// asks encoding/json, whose rules (null, case-insensitive keys, the last of repeated keys)
// then apply. entry is valid JSON.
func headerEntry(entry []byte) (rawInfo, bool) {
	var info rawInfo
	i := jsonscan.Space(entry, 0)
	if i == len(entry) || entry[i] != '{' {
		return info, false
	}
	for i = jsonscan.Space(entry, i+1); i < len(entry) && entry[i] == '"'; i = jsonscan.Next(entry, i) {
		key, end, ok := jsonscan.PlainString(entry, i)
		if i = jsonscan.Space(entry, end); !ok || i == len(entry) || entry[i] != ':' {
			return info, false
		}
		i = jsonscan.Space(entry, i+1)
		switch string(key) {
		case "dtype":
			v, end, ok := jsonscan.PlainString(entry, i)
			if !ok || info.DType != nil {
				return info, false
			}
			dtype := string(v)
			info.DType, i = &dtype, end
		case "shape", "data_offsets":
			dst := &info.Shape
			if key[0] == 'd' {
				dst = &info.Offsets
			}
			nums, end, ok := digitArray(entry, i)
			if !ok || *dst != nil {
				return info, false
			}
			*dst, i = &nums, end
		default:
			return info, false
		}
	}
	if i == len(entry) || entry[i] != '}' || jsonscan.Space(entry, i+1) != len(entry) {
		return info, false
	}
	return info, true
}

// digitArray reads an array of unsigned integers written as plain digits starting at b[i], and
// returns it and the index past it.
func digitArray(b []byte, i int) ([]json.Number, int, bool) {
	if i == len(b) || b[i] != '[' {
		return nil, i, false
	}
	nums := []json.Number{}
	for i = jsonscan.Space(b, i+1); i < len(b) && b[i] != ']'; i = jsonscan.Next(b, i) {
		d, end := jsonscan.Digits(b, i)
		if len(d) == 0 || (end < len(b) && (b[end] == '.' || b[end] == 'e' || b[end] == 'E')) {
			return nil, i, false
		}
		nums, i = append(nums, json.Number(d)), end
	}
	if i == len(b) {
		return nil, i, false
	}
	return nums, i + 1, true
}

// stringMap reads a metadata object whose values are all strings, giving what encoding/json
// gives for it as a map[string]string (the last of a repeated key wins) without its second
// validity scan of what Parse has checked: a lorapack file's metadata holds its manifest, ~100
// KB of escaped JSON, and that scan and unquoting was a third of opening one. For anything else
// (null, a value that is not a string) it says no, and the caller asks encoding/json, whose
// rules and errors then apply. b is valid UTF-8 JSON. FuzzStringMap holds it to encoding/json.
func stringMap(b []byte) (map[string]string, bool) {
	i := jsonscan.Space(b, 0)
	if i == len(b) || b[i] != '{' {
		return nil, false
	}
	md := map[string]string{}
	for i = jsonscan.Space(b, i+1); i < len(b) && b[i] == '"'; i = jsonscan.Next(b, i) {
		end := jsonscan.Value(b, i)
		key := jsonscan.Unquote(b[i:end])
		if i = jsonscan.Space(b, jsonscan.Space(b, end)+1); i == len(b) || b[i] != '"' { // past the colon
			return nil, false
		}
		end = jsonscan.Value(b, i)
		md[key] = jsonscan.Unquote(b[i:end])
		i = end
	}
	return md, true
}

// validateTensor reads one header entry's numbers and checks it (checkTensor) against the
// buffer size.
func validateTensor(path, name string, info rawInfo, bufLen uint64) (Tensor, span, error) {
	fail := func(format string, args ...any) (Tensor, span, error) {
		return Tensor{}, span{}, formatErr(path, name, format, args...)
	}
	if info.DType == nil || info.Shape == nil || info.Offsets == nil {
		return fail("header entry needs dtype, shape and data_offsets")
	}
	shape := make([]int, len(*info.Shape))
	for i, d := range *info.Shape {
		v, err := strconv.ParseInt(d.String(), 10, 64)
		if err != nil || v < 0 || v > math.MaxInt {
			return fail("shape %v: dimension %d must be a non-negative integer", *info.Shape, i)
		}
		shape[i] = int(v)
	}
	if len(*info.Offsets) != 2 {
		return fail("data_offsets must be [begin, end], got %d numbers", len(*info.Offsets))
	}
	var off [2]uint64
	for i, o := range *info.Offsets {
		v, err := strconv.ParseUint(o.String(), 10, 64)
		if err != nil {
			return fail("data_offsets %v: not non-negative integers", *info.Offsets)
		}
		off[i] = v
	}
	begin, end := off[0], off[1]
	if end < begin {
		return fail("data_offsets [%d, %d]: end before begin", begin, end)
	}
	if end > bufLen {
		return fail("data_offsets [%d, %d] run past the %d-byte data buffer", begin, end, bufLen)
	}
	if err := checkTensor(path, name, *info.DType, shape, end-begin); err != nil {
		return Tensor{}, span{}, err
	}
	return Tensor{Name: name, DType: *info.DType, Shape: shape}, span{name, begin, end}, nil
}

// checkTensor is the one home of what makes a tensor sound, whether read from a header
// (validateTensor) or laid out in memory (FromTensors): a known dtype, non-negative dimensions
// whose element count does not wrap, and exactly the bytes that count of that dtype fills.
func checkTensor(path, name, dtype string, shape []int, size uint64) error {
	bits, ok := dtypeBits[dtype]
	if !ok {
		return formatErr(path, name, "unknown dtype %q", dtype)
	}
	hasZero := false
	for i, d := range shape {
		if d < 0 {
			return formatErr(path, name, "shape %v: dimension %d must be a non-negative integer", shape, i)
		}
		hasZero = hasZero || d == 0
	}
	// The element count must not wrap: a wrapped product could match a small byte range. The
	// limit leaves room for the multiplication by the dtype's bit size below. A zero dimension
	// anywhere makes the tensor empty whatever the others are.
	var elems uint64
	if !hasZero {
		elems = 1
		for _, d := range shape {
			if elems > (math.MaxUint64/64)/uint64(d) {
				return formatErr(path, name, "shape %v: element count overflows", shape)
			}
			elems *= uint64(d)
		}
	}
	totalBits := elems * uint64(bits)
	if totalBits%8 != 0 {
		return formatErr(path, name, "%d elements of %s do not fill whole bytes", elems, dtype)
	}
	if totalBits/8 != size {
		return formatErr(path, name, "shape %v of %s needs %d bytes, data_offsets give %d", shape, dtype, totalBits/8, size)
	}
	return nil
}

// FromTensors is the File of tensors already laid out in memory (a decoder's output), checked
// as Parse checks a header: every tensor sound (checkTensor), names valid UTF-8, unique and
// not the reserved metadata key. It spares such a producer writing a header only for Parse to
// read it back. The caller guarantees what Parse's coverage check proves of a file: the
// tensors' Data do not overlap (each is its own region of one allocation). The File keeps
// tensors' Data and shapes; Close is harmless.
func FromTensors(path string, tensors []Tensor, metadata map[string]string) (*File, error) {
	f := &File{path: path, tensors: make(map[string]Tensor, len(tensors)), names: make([]string, 0, len(tensors)), metadata: metadata}
	for _, t := range tensors {
		switch _, dup := f.tensors[t.Name]; {
		case !utf8.ValidString(t.Name):
			return nil, formatErr(path, "", "tensor name %q is not valid UTF-8", t.Name)
		case dup:
			return nil, formatErr(path, t.Name, "listed twice")
		case t.Name == metadataKey:
			return nil, formatErr(path, t.Name, "the name is reserved for the metadata")
		}
		if err := checkTensor(path, t.Name, t.DType, t.Shape, uint64(len(t.Data))); err != nil {
			return nil, err
		}
		t.Shape = slices.Clone(t.Shape)
		f.tensors[t.Name] = t
		f.names = append(f.names, t.Name)
	}
	slices.Sort(f.names)
	return f, nil
}

// checkCoverage requires the tensors, sorted by offset, to tile the data buffer exactly: no
// gaps (hidden data), no overlaps (aliased tensors), nothing after the last tensor. This is the
// reference implementation's check.
func checkCoverage(path string, spans []span, bufLen uint64) error {
	slices.SortFunc(spans, func(a, b span) int {
		if a.begin != b.begin {
			if a.begin < b.begin {
				return -1
			}
			return 1
		}
		if a.end != b.end {
			if a.end < b.end {
				return -1
			}
			return 1
		}
		return 0
	})
	var at uint64
	for _, s := range spans {
		switch {
		case s.begin < at:
			return formatErr(path, s.name, "data_offsets [%d, %d] overlap the previous tensor, which ends at %d", s.begin, s.end, at)
		case s.begin > at:
			return formatErr(path, s.name, "data_offsets [%d, %d] leave a gap: the previous tensor ends at %d", s.begin, s.end, at)
		}
		at = s.end
	}
	if at != bufLen {
		return formatErr(path, "", "tensors cover %d bytes but the data buffer has %d", at, bufLen)
	}
	return nil
}

// Path is the file's path as given to Open or Parse.
func (f *File) Path() string { return f.path }

// Names returns the tensor names in sorted order. The slice must not be modified.
func (f *File) Names() []string { return f.names }

// Tensor returns the named tensor. Its Data aliases the file (read-only).
func (f *File) Tensor(name string) (Tensor, bool) {
	t, ok := f.tensors[name]
	if ok {
		t.Shape = slices.Clone(t.Shape)
	}
	return t, ok
}

// Metadata returns the __metadata__ entry (nil when absent). The map must not be modified.
func (f *File) Metadata() map[string]string { return f.metadata }

// Close releases the mapping; tensors obtained from f must not be used afterwards. Closing
// twice, or closing a File from Parse, is harmless.
func (f *File) Close() error {
	if f.unmap == nil {
		return nil
	}
	err := f.unmap()
	f.unmap = nil
	return err
}
