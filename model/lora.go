package model

// HostTensor is a tensor in host memory as it came from a file: little-endian elements of DType
// (often a slice of a memory-mapped safetensors file, so it must not be written to).
type HostTensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
	// Encoded, when set, is the tensor still in its codec stream: a backend that implements
	// EncodedUploader and DecodesOnDevice(Encoded.Codec) decodes it itself and ignores Data (which
	// then holds zeros, not the values). Only loaders that asked the backend set it, so backends
	// without EncodedUploader never see it.
	Encoded *EncodedTensor
}

// EncodedTensor is a tensor's lorapack codec stream (package lorapack), as stored.
type EncodedTensor struct {
	Codec  string // "q4" or "q8"
	Group  int    // the codec's group size
	Stream []byte // the whole stream, header included
}

// EncodedUploader is implemented by backends that decode some codec streams on the device
// (HostTensor.Encoded), so the host skips decoding them.
type EncodedUploader interface {
	DecodesOnDevice(codec string) bool
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
	// Digest identifies the adapter's content (every tensor's bytes, rank and scale, not its
	// name); the adapter cache computes it once per load, beside the first upload and before the
	// device copy can be leased. The engine's prefix cache keys KV pages by it, so a name
	// reloaded with other weights never reuses the old pages. The zero value means unknown:
	// such an adapter's pages are never shared.
	Digest [32]byte
}
