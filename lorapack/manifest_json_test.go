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

// A manifest as WriteContainer writes it (json.Marshal) is read by the fast walk, to the value
// encoding/json gives.
func TestManifestAsWrittenTakesTheFastPath(t *testing.T) {
	want := Manifest{Format: Format, BaseModel: "meta-llama/\"Llama\" 3", TargetModules: json.RawMessage(`["q_proj","v_proj"]`), UseRSLoRA: true,
		Modules: map[string]ModuleInfo{"model.layers.0.self_attn.q_proj": {Rank: 16, Alpha: 32, Scale: 2}},
		Tensors: map[string]TensorInfo{
			"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": {Codec: "q4", Density: 1, Kept: 65536, Shape: [2]int{16, 4096}, DType: "BF16", Bytes: 36876, Group: 32, CRC32C: 0xfedcba98},
			"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": {Codec: "rice", Density: 0.1, Kept: 6553, Shape: [2]int{4096, 16}, DType: "F32", Bytes: 1234, CRC32C: 7}},
		PEFTConfig: json.RawMessage(`{"peft_type":"LORA","r":16}`)}
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var got Manifest
	if !fastManifest(b, &got) || !reflect.DeepEqual(got, want) {
		t.Errorf("%s: fast path gives %+v", b, got)
	}
}

// FuzzManifestJSON holds readManifest to encoding/json: for any input, the same manifest or an
// error where encoding/json gives one (the same error: it comes from encoding/json).
func FuzzManifestJSON(f *testing.F) {
	for _, s := range []string{
		`{"format":"loraplex.lorapack/v2","base_model":"","target_modules":["q_proj","v_proj"],"use_rslora":false,"modules":{"model.layers.0.self_attn.q_proj":{"rank":16,"alpha":32,"scale":2}},"tensors":{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":{"codec":"q4","density":1,"kept":1024,"shape":[16,64],"dtype":"BF16","bytes":600,"group":32,"crc32c":4275878552}},"peft_config":{"peft_type":"LORA","r":16}}`,
		` { "format" : "a\u0062" , "target_modules" : null , "peft_config" : "x" , "use_rslora" : true , "tensors" : { } , "modules" : { } } `,
		`{"Format":"x"}`, `{"format":"x","format":"y"}`, `{"format":null}`, `{"use_rslora":null}`, `{"modules":null}`,
		`{"tensors":{"a":{"codec":"q4"},"a":{"kept":2}}}`, `{"tensors":{"a":null}}`, `{"tensors":{"a":{"KEPT":1}}}`,
		`{"modules":{"m":{"rank":"16"}}}`, `{"modules":{"m":{"rank":-1,"alpha":1e400,"scale":3.5e38}}}`, `{"modules":{"m":{"RANK":1,"scale":1e-50}}}`,
		`{"modules":{"m":{"rank":1,"rank":2}, "m":{"alpha":0.5}}}`, `{"modules":{"m":{"rank":1.0,"alpha":-2,"scale":0.1}}}`, `{"global":{"density":0.1}}`, `{"extra":1}`, `{"tensors":[]}`,
		`null`, `{}`, `[]`, `"x"`, `{"base_model":"\ud83d"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want, got Manifest
		wantErr := json.Unmarshal(b, &want)
		err := readManifest(b, &got)
		if (err == nil) != (wantErr == nil) || (err != nil && err.Error() != wantErr.Error()) {
			t.Fatalf("%s: readManifest error %v, encoding/json %v", b, err, wantErr)
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: readManifest gives %+v, encoding/json %+v", b, got, want)
		}
	})
}
