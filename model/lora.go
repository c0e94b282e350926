package model

// HostTensor is a tensor in host memory as it came from a file: little-endian elements of DType
// (often a slice of a memory-mapped safetensors file, so it must not be written to).
type HostTensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// HostLoRA is one adapted projection of one layer: y += Scale * B (A x).
type HostLoRA struct {
	A     HostTensor // [rank, in]
	B     HostTensor // [out, rank]
	Rank  int
	Scale float32 // lora_alpha / rank, or lora_alpha / sqrt(rank) with rslora; per-module patterns applied
}

// HostAdapter is a LoRA adapter validated against a base model, still in host memory.
// Modules[layer][proj] is nil where the adapter does not touch that projection.
type HostAdapter struct {
	Name    string
	Path    string
	Modules [][NumProj]*HostLoRA
	// Bytes is the size of all A and B tensors as stored.
	Bytes int64
}
