package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// raw assembles a file from a literal header and data buffer, for tests of malformed files.
func raw(header string, buf []byte) []byte {
	out := make([]byte, 8, 8+len(header)+len(buf))
	binary.LittleEndian.PutUint64(out, uint64(len(header)))
	out = append(out, header...)
	return append(out, buf...)
}

func sampleTensors() []Tensor {
	f32 := make([]byte, 2*3*4)
	for i := range f32 {
		f32[i] = byte(i)
	}
	return []Tensor{
		{Name: "b.weight", DType: "F32", Shape: []int{2, 3}, Data: f32},
		{Name: "a.bias", DType: "BF16", Shape: []int{3}, Data: []byte{1, 2, 3, 4, 5, 6}},
		{Name: "scalar", DType: "I64", Shape: []int{}, Data: make([]byte, 8)},
		{Name: "empty", DType: "F16", Shape: []int{0, 5}, Data: []byte{}},
		{Name: "fp8", DType: "F8_E4M3", Shape: []int{4}, Data: []byte{9, 8, 7, 6}},
		{Name: "nibbles", DType: "F4", Shape: []int{2, 2}, Data: []byte{0x12, 0x34}},
	}
}

func TestRoundTrip(t *testing.T) {
	in := sampleTensors()
	md := map[string]string{"format": "pt", "note": "x"}
	var buf bytes.Buffer
	if err := Write(&buf, in, md); err != nil {
		t.Fatal(err)
	}
	hdrLen := binary.LittleEndian.Uint64(buf.Bytes())
	if hdrLen%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", hdrLen)
	}
	path := filepath.Join(t.TempDir(), "x.safetensors")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := []string{"a.bias", "b.weight", "empty", "fp8", "nibbles", "scalar"}
	if !reflect.DeepEqual(f.Names(), want) {
		t.Errorf("Names = %v, want %v", f.Names(), want)
	}
	if !reflect.DeepEqual(f.Metadata(), md) {
		t.Errorf("Metadata = %v, want %v", f.Metadata(), md)
	}
	for _, w := range in {
		got, ok := f.Tensor(w.Name)
		if !ok {
			t.Fatalf("tensor %s missing", w.Name)
		}
		if got.DType != w.DType || !reflect.DeepEqual(got.Shape, w.Shape) || !bytes.Equal(got.Data, w.Data) || got.Name != w.Name {
			t.Errorf("tensor %s = %+v, want %+v", w.Name, got, w)
		}
	}
	if _, ok := f.Tensor("nope"); ok {
		t.Error("found a tensor that does not exist")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestWriteNoMetadata(t *testing.T) {
	var buf bytes.Buffer
	if err := Write(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Parse("empty", buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Names()) != 0 || f.Metadata() != nil {
		t.Errorf("got names %v metadata %v", f.Names(), f.Metadata())
	}
}

func TestWriteRejects(t *testing.T) {
	for name, ts := range map[string][]Tensor{
		"bad length": {{Name: "x", DType: "F32", Shape: []int{2}, Data: make([]byte, 4)}},
		"dtype":      {{Name: "x", DType: "F17", Shape: []int{1}, Data: make([]byte, 4)}},
		"duplicate":  {{Name: "x", DType: "U8", Shape: []int{1}, Data: []byte{1}}, {Name: "x", DType: "U8", Shape: []int{1}, Data: []byte{1}}},
		"reserved":   {{Name: "__metadata__", DType: "U8", Shape: []int{1}, Data: []byte{1}}},
		"negative":   {{Name: "x", DType: "U8", Shape: []int{-1}, Data: nil}},
	} {
		if err := Write(&bytes.Buffer{}, ts, nil); err == nil {
			t.Errorf("%s: Write accepted %+v", name, ts)
		}
	}
}

func TestParseErrors(t *testing.T) {
	huge := make([]byte, 8)
	binary.LittleEndian.PutUint64(huge, MaxHeaderSize+1)
	past := make([]byte, 16)
	binary.LittleEndian.PutUint64(past, 9)
	four := make([]byte, 4)
	tests := []struct {
		name, tensor, msg string
		data              []byte
	}{
		{"short file", "", "shorter than", []byte{1, 2, 3}},
		{"huge header", "", "exceeds", huge},
		{"header past end", "", "runs past the end", past},
		{"not json", "", "not valid JSON", raw(`{"a":`, nil)},
		{"not utf8", "", "UTF-8", raw("{\"\xff\":1}", nil)},
		{"not object", "", "not a JSON object", raw(`[1,2]`, nil)},
		{"trailing", "", "not valid JSON", raw(`{} {}`, nil)},
		{"duplicate name", "x", "twice", raw(`{"x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}`, nil)},
		{"duplicate name, once escaped", "x", "twice", raw(`{"x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}, "\u0078" :{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}`, nil)},
		{"metadata not strings", "", "__metadata__", raw(`{"__metadata__":{"a":1}}`, nil)},
		{"entry not object", "x", "bad header entry", raw(`{"x":5}`, nil)},
		{"missing field", "x", "needs dtype", raw(`{"x":{"dtype":"U8","shape":[1]}}`, []byte{1})},
		{"unknown dtype", "x", "unknown dtype \"Q4\"", raw(`{"x":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}`, []byte{1})},
		{"negative dim", "x", "non-negative", raw(`{"x":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}`, []byte{1})},
		{"fractional dim", "x", "non-negative", raw(`{"x":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}`, []byte{1})},
		{"huge dim", "x", "non-negative", raw(`{"x":{"dtype":"U8","shape":[1e30],"data_offsets":[0,1]}}`, []byte{1})},
		{"overflow", "x", "overflows", raw(`{"x":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,4]}}`, four)},
		{"offsets count", "x", "[begin, end]", raw(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[0]}}`, []byte{1})},
		{"negative offset", "x", "non-negative integers", raw(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}`, []byte{1})},
		{"end before begin", "x", "end before begin", raw(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}}`, []byte{1})},
		{"offsets past buffer", "x", "run past", raw(`{"x":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}`, []byte{1})},
		{"length mismatch", "x", "needs 8 bytes", raw(`{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, four)},
		{"sub-byte partial", "x", "whole bytes", raw(`{"x":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}`, []byte{1})},
		{"overlap", "y", "overlap", raw(`{"x":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"y":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}`, []byte{1, 2, 3})},
		{"gap", "y", "gap", raw(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"y":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}`, []byte{1, 2, 3})},
		{"gap at start", "x", "gap", raw(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, []byte{1, 2})},
		{"trailing data", "", "cover 1 bytes but the data buffer has 2", raw(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, []byte{1, 2})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse("bad.safetensors", tc.data)
			if err == nil {
				t.Fatalf("Parse accepted it: %v", f.Names())
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T %v is not a *FormatError", err, err)
			}
			if fe.File != "bad.safetensors" || fe.Tensor != tc.tensor || !strings.Contains(fe.Msg, tc.msg) {
				t.Errorf("got %+v, want tensor %q and message containing %q", fe, tc.tensor, tc.msg)
			}
			if !strings.Contains(err.Error(), "bad.safetensors") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

// Padding with spaces after the JSON object is what the reference writer does and must parse;
// empty-shape scalars and zero-size tensors placed anywhere are fine too.
func TestParseAccepts(t *testing.T) {
	for name, data := range map[string][]byte{
		"padded":          raw(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}      `, []byte{7}),
		"empty header":    raw(`{}`, nil),
		"zero size last":  raw(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"e":{"dtype":"F32","shape":[0],"data_offsets":[1,1]}}`, []byte{7}),
		"zero with huge":  raw(`{"e":{"dtype":"F32","shape":[9223372036854775807,0],"data_offsets":[0,0]}}`, nil),
		"null metadata":   raw(`{"__metadata__":null}`, nil),
		"unknown field":   raw(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":true}}`, []byte{7}),
		"spaced, escaped": raw(` { "\u0078" : { "data_offsets" : [ 0 , 1 ] , "DTYPE" : "\u0055\u0038" , "shape" : [ 1 ] } , "__metadata__" : { "k" : "v\"" } } `, []byte{7}),
	} {
		if _, err := Parse(name, data); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "missing.safetensors")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v", err)
	}
	empty := filepath.Join(dir, "empty.safetensors")
	os.WriteFile(empty, nil, 0o644)
	var fe *FormatError
	if _, err := Open(empty); !errors.As(err, &fe) {
		t.Errorf("empty file: got %v", err)
	}
}
