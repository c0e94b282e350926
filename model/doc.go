// Package model is the model itself, written once for every device: the architecture (Config:
// Llama, Mistral, Qwen2 and Qwen3 in one struct), the weights (Weights, loaded from safetensors
// onto a Backend), LoRA adapters (HostAdapter, Adapter) and learned routers over them (Routing),
// the forward pass (Runner) and the definition of sampling (SampleReference).
//
// # Backends
//
// Backend is everything the forward pass needs from a device; cpu/ (pure Go, also the oracle
// of the others) and cuda/ implement it. Everything beyond it is an optional capability: a
// named interface declared here (no anonymous interface assertions anywhere), asserted mostly
// inside this package (Runner, UploadAdapter, AliasesUploads); the engine reaches them through
// the Runner's methods (CanSample, MasksTokens, SetBatchInvariant, Err, ReleaseRouting, ...), never by asserting on
// Runner.B. The capabilities and who implements them:
//
//	Capability        What it gives                                       cpu  cuda
//	DeviceSampler     samples every logits row (SampleReference)          yes  yes
//	StepSynchronizer  Sync: the step's queued ops have completed          -    yes
//	StepRecorder      records a step's launches once, replays them        -    yes
//	SegmentKeeper     replays the segment tables it holds with no op call -    yes
//	SegmentMerger     one LoRA segment for a run of one adapter's rows    yes  switch
//	FailureReporter   Err: the backend's sticky failure (health)          yes  yes
//	DeviceRouter      routes router rows on the device (RouteLoRA)        -    yes
//	DeviceGroupRouter routes q/k/v's (gate/up's) members in one call      -    yes
//	RoutedFolder      a batch-1 step's expert shrinks ride the products   -    yes
//	AdapterUploader   uploads and frees a whole adapter at once (a slab)  -    yes
//	EncodedUploader   decodes lorapack q4/q8 streams on the device        -    yes
//	UploadAliaser     Upload may alias the adapter's host copy            yes  -
//	SharedMatMuler    q/k/v, gate/up products of one input together       yes  yes
//	DecodeFuser       RoPE + KV store, gate/up + SiLU in one launch each  -    yes
//	LoRAGrouper       one LoRA launch pair for q/k/v, one for gate/up     -    yes
//	SiLUMulMatMuler   SwiGLU writes the down projection's bf16 input      -    yes
//	LoRASwiGLUer      gate/up's LoRA deltas added inside SwiGLU           -    yes
//	LoRARoPEer        q/k/v's LoRA deltas added inside RoPE + KV store    -    yes
//	NormFuser         (add +) RMSNorm folded into q/k/v, gate/up GEMVs    -    yes
//	LoRAFolder        LoRA (and the norm) in the base products' call      -    yes
//	NormKeeper        a routed step's norm folded into q/k/v, gate/up     -    yes
//	LogitBiaser       applies SampleRow.Bias (logit_bias)                 yes  yes
//	TokenMasker       honours SampleRow.Allowed (constrained decoding)    yes  yes
//	SampleReserver    sizes the sampler's buffers once (NewRunner)        -    yes
//	BatchInvariant    rows computed alike in any batch (deterministic)    yes  yes
//
// DeviceSampler is required by the engine (serve), which has no sampler of its own: every
// backend samples the same definition, the CUDA kernel step by step and the CPU through
// Sampler (the same arithmetic, faster), so with identical logits and the request's U a seeded
// request picks identical tokens on both.
//
// # The step contract
//
// Runner.Forward and Runner.ForwardSample return only once the step is complete on the
// device, whatever it was made of: the runner's step function calls StepSynchronizer.Sync at
// the end of every step, including steps made only of prefill chunks, which read nothing back.
// Callers may therefore release whatever the step read (adapter weights, router gates, KV
// pages) as soon as the call returns; the engine does, and the CUDA backend reuses a freed
// adapter's slab without waiting for the device.
package model
