package model

import "fmt"

// DType is the element type of a tensor. Weights arrive as F32, BF16 or F16; activations are F32
// on the CPU backend.
type DType int

const (
	F32 DType = iota
	BF16
	F16
)

// Size is the element size in bytes.
func (d DType) Size() int {
	switch d {
	case F32:
		return 4
	case BF16, F16:
		return 2
	}
	return 0
}

func (d DType) String() string {
	switch d {
	case F32:
		return "F32"
	case BF16:
		return "BF16"
	case F16:
		return "F16"
	}
	return fmt.Sprintf("DType(%d)", int(d))
}

// ParseDType maps a safetensors dtype string ("F32", "BF16", "F16") to a DType.
func ParseDType(s string) (DType, error) {
	switch s {
	case "F32":
		return F32, nil
	case "BF16":
		return BF16, nil
	case "F16":
		return F16, nil
	}
	return 0, fmt.Errorf("unsupported dtype %q (want F32, BF16 or F16)", s)
}
