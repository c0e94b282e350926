package safetensors

// dtypeBits is the element size in bits of every dtype the safetensors format defines. Sub-byte
// types (F4, F6_*) are packed; a tensor of them must still fill whole bytes. Conversion to a
// compute type happens elsewhere: here the size is only needed to check byte lengths.
var dtypeBits = map[string]int{
	"BOOL":    8,
	"F4":      4,
	"F6_E2M3": 6,
	"F6_E3M2": 6,
	"U8":      8,
	"I8":      8,
	"F8_E5M2": 8,
	"F8_E4M3": 8,
	"F8_E8M0": 8,
	"I16":     16,
	"U16":     16,
	"F16":     16,
	"BF16":    16,
	"I32":     32,
	"U32":     32,
	"F32":     32,
	"C64":     64,
	"F64":     64,
	"I64":     64,
	"U64":     64,
}

// DTypeBits returns the element size in bits of a safetensors dtype string, and false for a
// string the format does not define.
func DTypeBits(dtype string) (int, bool) {
	b, ok := dtypeBits[dtype]
	return b, ok
}
