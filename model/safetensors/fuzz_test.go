package safetensors

import (
	"bytes"
	"testing"
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
