package model

// Memory arithmetic for sizing the KV cache from a memory budget (the server's
// --gpu-memory-utilization and --kv-cache-memory): plain Go, so the CPU tests cover what a
// CUDA start-up computes.

// KVElementSizer is implemented by backends whose KV cache does not hold float32 elements
// (CUDA keeps 16-bit keys and values). Backends without it keep float32.
type KVElementSizer interface {
	KVElementBytes() int
}

// MemoryReporter is implemented by backends with their own memory (a GPU): free and total bytes
// of the device, as the driver reports them now. Host backends share the machine's RAM and do
// not implement it.
type MemoryReporter interface {
	MemInfo() (free, total uint64, err error)
}

// KVElementBytes is the size of one KV-cache element on b (4 unless b says otherwise).
func KVElementBytes(b Backend) int {
	if s, ok := b.(KVElementSizer); ok {
		return s.KVElementBytes()
	}
	return 4
}

// KVBytesPerToken is what one token's keys and values take in every layer of the cache, with
// elements of elemBytes bytes.
func (c *Config) KVBytesPerToken(elemBytes int) int64 {
	return 2 * int64(c.NumLayers) * int64(c.NumKVHeads) * int64(c.HeadDim) * int64(elemBytes)
}

// WorkspaceBytes is what NewRunner allocates besides the KV cache: the float32 activations of
// MaxTokens rows, the logit rows and the rotary table (NewRunner's Alloc calls, summed).
func (c *Config) WorkspaceBytes(opt RunnerOptions) int64 {
	n, H, D := int64(opt.MaxTokens), int64(c.HiddenSize), int64(c.HeadDim)
	qd, kvd, I := int64(c.NumHeads)*D, int64(c.NumKVHeads)*D, int64(c.IntermediateSize)
	rows := n * (2*H + max(H, qd) + 2*qd + 2*kvd + 3*I)
	logits := int64(opt.MaxLogitRows) * (H + int64(c.VocabSize))
	rope := int64(opt.MaxContext) * D
	return 4 * (rows + logits + rope)
}

// AdapterBytes is the device memory of one adapter of rank r on every projection of every layer,
// with elements of elemBytes bytes: what one adapter slot can take at most (vLLM reserves
// max_loras of these at max_lora_rank before sizing its KV cache).
func (c *Config) AdapterBytes(rank, elemBytes int) int64 {
	var perLayer int64
	for p := Proj(0); p < NumProj; p++ {
		out, in := c.ProjShape(p)
		perLayer += int64(out + in)
	}
	return perLayer * int64(c.NumLayers) * int64(rank) * int64(elemBytes)
}

// DerivedMaxLen is the longest context the model supports, by vLLM's rule
// (_get_and_verify_max_len): max_position_embeddings, times the RoPE scaling factor for scalings
// that stretch a shorter trained context (linear: max_position_embeddings x factor; yarn:
// original_max_position_embeddings x factor). llama3 configs already state the extended length
// in max_position_embeddings, so it stands as given. 0 when the config gives no length.
func (c *Config) DerivedMaxLen() int {
	switch c.Rope.Type {
	case "linear":
		return int(float64(c.MaxPositions) * c.Rope.Factor)
	case "yarn":
		return int(float64(c.Rope.OriginalMaxPositions) * c.Rope.Factor)
	}
	return c.MaxPositions
}
