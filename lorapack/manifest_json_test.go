package lorapack

import (
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"
)

// A manifest entry as WriteContainer writes it (json.Marshal) is read by the fast path and
// round-trips exactly, for every codec's fields (group present or omitted, a checksum above
// 2^31, a fractional density).
func TestTensorInfoAsWrittenTakesTheFastPath(t *testing.T) {
	for _, want := range []TensorInfo{
		{Codec: "q4", Density: 1, Kept: 65536, Shape: [2]int{16, 4096}, DType: "BF16", Bytes: 36876, Group: 32, CRC32C: 0xfedcba98},
		{Codec: "rice", Density: 0.1, Kept: 6553, Shape: [2]int{4096, 16}, DType: "F32", Bytes: 1234, CRC32C: 7},
		{},
	} {
		b, err := json.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := fastTensorInfo(b)
		if !ok || got != want {
			t.Errorf("%s: fast path %v, %+v", b, ok, got)
		}
		var viaJSON TensorInfo
		if err := json.Unmarshal(b, &viaJSON); err != nil || viaJSON != want {
			t.Errorf("%s: json.Unmarshal gives %+v, %v", b, viaJSON, err)
		}
	}
}

// FuzzTensorInfoJSON holds the manifest's fast path to encoding/json: every valid entry it
// accepts decodes to what encoding/json gives, and TensorInfo.UnmarshalJSON (fast or not)
// always gives encoding/json's value and accepts exactly what it accepts.
func FuzzTensorInfoJSON(f *testing.F) {
	for _, s := range []string{
		`{"codec":"q4","density":1,"kept":65536,"shape":[16,4096],"dtype":"BF16","bytes":36876,"group":32,"crc32c":4275878552}`,
		`{"codec":"rice","density":0.1,"kept":6553,"shape":[4096,16],"dtype":"F32","bytes":1234,"crc32c":7}`,
		` { "KEPT" : 3 , "codec" : "q\u0034" , "shape" : [ 1 , 2 , 3 ] } `,
		`{"kept":1,"kept":2,"crc32c":4294967296,"density":1e400}`,
		`{"shape":[1],"group":-1,"bytes":1.0,"density":"1"}`,
		`{"kept":9223372036854775808,"shape":[1e2,2]}`,
		`null`, `{}`, `[]`, `"x"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !utf8.Valid(b) || !json.Valid(b) {
			return
		}
		var want tensorInfoJSON
		wantErr := json.Unmarshal(b, &want)
		if got, ok := fastTensorInfo(b); ok && (wantErr != nil || got != TensorInfo(want)) {
			t.Fatalf("%s: fast path gives %+v, encoding/json %+v, %v", b, got, want, wantErr)
		}
		var got TensorInfo
		err := json.Unmarshal(b, &got)
		if (err == nil) != (wantErr == nil) || (err == nil && !reflect.DeepEqual(got, TensorInfo(want))) {
			t.Fatalf("%s: UnmarshalJSON gives %+v, %v; encoding/json %+v, %v", b, got, err, want, wantErr)
		}
	})
}
