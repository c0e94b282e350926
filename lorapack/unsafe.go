package lorapack

import (
	"unsafe"

	"github.com/loraplex/loraplex/model/safetensors"
)

// decodeInto decodes a stream straight into a tensor's little-endian bytes. Viewing the bytes as
// []uint16 / []float32 avoids a second pass (and a second buffer) on the load path; it relies on
// a little-endian host (amd64, arm64: every platform loraplex builds for) and on the data being
// aligned to the element size, which Container.layout guarantees. The tensor's bytes must be
// zero (the decoders' buffers are fresh allocations).
func decodeInto(stream []byte, t safetensors.Tensor) error {
	if len(t.Data) == 0 {
		return corrupt("empty tensor")
	}
	p := unsafe.Pointer(unsafe.SliceData(t.Data))
	if t.DType == "F32" {
		return decodeF32(stream, unsafe.Slice((*float32)(p), len(t.Data)/4), true)
	}
	return decodeBF16(stream, unsafe.Slice((*uint16)(p), len(t.Data)/2), true)
}

// asBytes views bf16 values as their little-endian bytes.
func asBytes(v []uint16) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 2*len(v))
}
