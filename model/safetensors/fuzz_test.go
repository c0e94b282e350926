package safetensors

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"
	"unsafe"
)

// FuzzParse checks that Parse never panics and that whatever it accepts is sound: every
// tensor's data lies inside the input and has the length its shape and dtype imply; and that
// FromTensors, which checks tensors laid out in memory with the same rules, accepts them too.
func FuzzParse(f *testing.F) {
	var good bytes.Buffer
	if err := Write(&good, sampleTensors(), map[string]string{"format": "pt"}); err != nil {
		f.Fatal(err)
	}
	f.Add(good.Bytes())
	f.Add(raw(`{}`, nil))
	f.Add(raw(`{"x":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"y":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}`, []byte{1, 2, 3}))
	f.Add(raw(`{"x":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,4]}}`, make([]byte, 4)))
	f.Add(raw(`{"__metadata__":{"a":"b"},"x":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}`, []byte{1}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("fuzz", data)
		if err != nil {
			return
		}
		var tensors []Tensor
		for _, n := range file.Names() {
			tt, _ := file.Tensor(n)
			tensors = append(tensors, tt)
		}
		if _, err := FromTensors("fuzz", tensors, file.Metadata()); err != nil {
			t.Fatalf("Parse accepts what FromTensors refuses: %v", err)
		}
		lo := uintptr(unsafe.Pointer(unsafe.SliceData(data)))
		hi := lo + uintptr(len(data))
		for _, n := range file.Names() {
			tt, ok := file.Tensor(n)
			if !ok {
				t.Fatalf("listed tensor %q not found", n)
			}
			bits, ok := DTypeBits(tt.DType)
			if !ok {
				t.Fatalf("tensor %q has unknown dtype %q", n, tt.DType)
			}
			elems := uint64(1)
			for _, d := range tt.Shape {
				if d < 0 {
					t.Fatalf("tensor %q has negative dim", n)
				}
				elems *= uint64(d)
			}
			if elems*uint64(bits) != uint64(len(tt.Data))*8 {
				t.Fatalf("tensor %q: %d elements of %d bits in %d bytes", n, elems, bits, len(tt.Data))
			}
			if len(tt.Data) > 0 {
				p := uintptr(unsafe.Pointer(unsafe.SliceData(tt.Data)))
				if p < lo || p+uintptr(len(tt.Data)) > hi {
					t.Fatalf("tensor %q lies outside the input", n)
				}
			}
		}
	})
}

// FuzzHeaderEntry holds headerEntry, the fast reader of a header entry, to encoding/json: on
// every valid entry it accepts, it gives exactly what encoding/json decodes.
func FuzzHeaderEntry(f *testing.F) {
	for _, s := range []string{
		`{"dtype":"BF16","shape":[4096,16],"data_offsets":[0,131072]}`,
		` { "shape" : [ ] , "data_offsets":[0,0], "dtype" : "U8" } `,
		`{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}`,
		`{"DType":"U8","shape":[1],"data_offsets":[0,1]}`,
		`{"dtype":"U\u0038","shape":[1],"data_offsets":[0,1]}`,
		`{"dtype":null,"shape":[-1,1.5,1e3],"data_offsets":null}`,
		`{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":{"a":[1,"]"]}}`,
		`{}`, `[]`, `5`, `{"shape":[18446744073709551616]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, entry []byte) {
		if !utf8.Valid(entry) || !json.Valid(entry) { // what Parse guarantees before the walk
			return
		}
		got, ok := headerEntry(entry)
		if !ok {
			return
		}
		var want rawInfo
		if err := json.Unmarshal(entry, &want); err != nil {
			t.Fatalf("headerEntry accepts %q, encoding/json refuses it: %v", entry, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: headerEntry gives %s, encoding/json %s", entry, show(got), show(want))
		}
	})
}

func show(i rawInfo) string {
	b, _ := json.Marshal(i)
	return string(b)
}

// FuzzStringMap holds stringMap, the metadata's fast reader, to encoding/json: on every valid
// object it accepts, it gives exactly the map[string]string encoding/json decodes.
func FuzzStringMap(f *testing.F) {
	for _, s := range []string{
		`{"format":"pt"}`,
		`{"format":"loraplex.lorapack/v2","lorapack":"{\"format\":\"x\",\"tensors\":{\"a\\\\b\":1}}","lorapack_crc32c":"0badf00d"}`,
		` { "a" : "1" , "a":"2", "\u00e9":"\ud83d\ude00\ud83d" } `,
		`{}`, `null`, `{"a":null}`, `{"a":1}`, `{"a":{"b":"c"}}`, `["a"]`, `"a"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !utf8.Valid(b) || !json.Valid(b) { // what Parse guarantees before the walk
			return
		}
		got, ok := stringMap(b)
		if !ok {
			return
		}
		var want map[string]string
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatalf("stringMap accepts %q, encoding/json refuses it: %v", b, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: stringMap gives %q, encoding/json %q", b, got, want)
		}
	})
}
