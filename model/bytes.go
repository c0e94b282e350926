package model

import "unsafe"

// f32Bytes views a float32 slice as bytes (little-endian hosts only, like everything here).
func f32Bytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), len(f)*4)
}
