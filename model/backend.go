package model

import (
	"errors"
	"fmt"
)

// Tensor is a row-major matrix owned by a Backend. Everything the forward pass touches is 2-D:
// weights are [out, in], activations [tokens, features]; a [tokens, heads*headDim] activation is
// reshaped to [tokens*heads, headDim] for per-head work. Tensor is a small value: slicing rows or
// reshaping makes a new view without touching the storage or allocating.
type Tensor struct {
	Rows, Cols int
	DType      DType
	Buf        any // the backend's storage (CPU: []float32 or []uint16; CUDA: a device allocation)
	Off        int // element offset of row 0 inside Buf
}

// Slice returns rows [row, row+n) as a view.
func (t Tensor) Slice(row, n int) Tensor {
	if row < 0 || n < 0 || row+n > t.Rows {
		panic(fmt.Sprintf("model: Slice(%d, %d) of a %dx%d tensor", row, n, t.Rows, t.Cols))
	}
	t.Off += row * t.Cols
	t.Rows = n
	return t
}

// Reshape views the same elements as rows x cols.
func (t Tensor) Reshape(rows, cols int) Tensor {
	if rows*cols != t.Rows*t.Cols {
		panic(fmt.Sprintf("model: Reshape %dx%d to %dx%d", t.Rows, t.Cols, rows, cols))
	}
	t.Rows, t.Cols = rows, cols
	return t
}

// Shape is "RxC", for error messages.
func (t Tensor) Shape() string { return fmt.Sprintf("%dx%d", t.Rows, t.Cols) }

// KVSpec sizes the paged KV cache: Pages pages of PageSize token slots, per layer, each slot
// holding KVHeads*HeadDim keys and as many values.
type KVSpec struct {
	Layers, Pages, PageSize, KVHeads, HeadDim int
}

// Step is the batch of one forward pass: N token rows drawn from several sequences. Rows of one
// sequence are contiguous and in position order. The backend receives it once per step (Prepare)
// so a GPU backend can upload the metadata in one copy.
type Step struct {
	Tokens    []int32 // [N] token ids
	Positions []int32 // [N] position of each row within its sequence
	Slots     []int32 // [N] KV-cache slot each row's key/value is written to (page*PageSize+offset)
	Seqs      []SeqRows
	// LogitRows lists the rows whose logits the caller wants (the last prompt row of a prefill,
	// every decode row), in output order.
	LogitRows []int32
}

// SeqRows says which rows of a Step belong to one sequence and where its KV history lives.
type SeqRows struct {
	Start, N int     // rows [Start, Start+N) of the step
	Len      int     // tokens in the cache once this step is written (last position + 1)
	Pages    []int32 // block table: page i holds positions [i*PageSize, (i+1)*PageSize)
}

// AttnParams describe one attention call.
type AttnParams struct {
	Heads, KVHeads, HeadDim int
	Scale                   float32 // usually 1/sqrt(HeadDim)
	Window                  int     // > 0: attend only to the last Window positions (sliding window)
}

// LoRASeg applies one adapter to a run of rows: out[rows] += Scale * (x[rows] Aᵀ) Bᵀ. A is
// [rank, in], B is [out, rank]. Rows needing different adapters (or router experts, whose gate
// weight is folded into Scale) become different segments; rows with no adapter get none. Each
// segment is read at its adapter's own rank: nothing is padded to a maximum rank.
type LoRASeg struct {
	Start, N int
	A, B     Tensor
	Scale    float32
}

// StepRecorder is implemented by backends that can record the launches of a step once and
// replay them (CUDA graphs), which removes per-launch host cost from decode steps.
type StepRecorder interface {
	// BeginStep is called after Prepare with a key that determines every launch of the step
	// (row counts, logit rows, the LoRA segment layout); nil asks for plain execution. It
	// returns true when a recording of key will be replayed: the ops of the step then only
	// stage their per-step data.
	BeginStep(key []byte) (replay bool)
	// EndStep completes the step's launches. ErrRerun asks the caller to run the step's ops
	// again, unrecorded (a recording could not be made).
	EndStep() error
}

// SegmentKeeper is a StepRecorder whose replayed steps stage nothing but their LoRA segment
// tables, so that a replay of the tables the device already holds needs no op calls at all. At
// batch 64 on adapters the forward pass's walk writes 14,336 segments a step, host time the
// device waits for (the runner builds a step only once the last one completed): consecutive
// decode steps of the same sequences on the same adapters skip it.
type SegmentKeeper interface {
	StepRecorder
	// StepSegments is called right after BeginStep in every step with a key, with the
	// version of the segment lists the step's ops pass (unique to their content and never
	// reused, across runners). In a step with device-routed sequences it names the plain
	// sequences' lists; the routed rows' segments are the backend's to write inside the
	// recording (DeviceRouter), which a replay does again. True only when BeginStep
	// returned true and the device holds this version's tables as the recording reads them: the
	// caller then makes no op call before EndStep. The backend notes the version for the tables
	// the step leaves.
	StepSegments(version uint64) (kept bool)
}

// SegmentMerger is implemented by backends that take one LoRA segment for a run of adjacent
// sequences on the same adapter (their rows are contiguous) instead of one a sequence: a batch
// of 64 requests on one adapter then passes 7 segments a layer instead of 448, fewer for the
// host to write and the backend to walk. The answer may change between steps (a switch). A
// row's LoRA delta is the same sum either way; in deterministic mode (BatchInvariant) a backend
// computes it bitwise alike in both layouts, as it already must for a prompt prefilled in any
// chunks.
type SegmentMerger interface {
	MergesSegments() bool
}

// ErrRerun is returned by StepRecorder.EndStep when the step must be run again unrecorded.
var ErrRerun = errors.New("model: run the step again without recording")

// StepSynchronizer is implemented by backends whose ops return before the device has run them
// (CUDA queues launches on a stream). Sync returns once every op queued so far has completed,
// with the backend's sticky error if one has failed.
//
// The step contract: Runner.Forward and Runner.ForwardSample return only once the step is
// complete on the device, including steps made only of prefill chunks, which read nothing back.
// The runner calls Sync at the end of every step (runner.step, the one place), so a caller may
// release what the step read (an adapter's weights, KV pages) as soon as the call returns: the
// engine hands a cancelled request's adapter back right after the step, and the CUDA backend
// reuses a freed adapter's slab without waiting for the device (cuda.Backend.FreeAdapter).
type StepSynchronizer interface {
	Sync() error
}

// FailureReporter is implemented by backends that can fail for good (a sticky CUDA error):
// Err returns that failure, nil while the backend works. Ops without an error result (Alloc)
// are checked through it, and health checks report NOT_SERVING once it is set.
type FailureReporter interface {
	Err() error
}

// TokenMasker is implemented by backends whose DeviceSampler honours SampleRow.Allowed
// (constrained decoding); MasksTokens reports whether it does. The engine refuses constrained
// requests on other backends rather than ignore the constraint.
type TokenMasker interface {
	MasksTokens() bool
}

// MasksTokens reports whether the backend's sampler honours SampleRow.Allowed (TokenMasker).
func (r *Runner) MasksTokens() bool {
	m, ok := r.B.(TokenMasker)
	return ok && m.MasksTokens()
}

// BatchInvariant is implemented by backends that can compute every row of a step the same
// way whatever else the step holds (deterministic mode, serve.Options.Deterministic): with it
// on, a row's logits, and so its tokens and logprobs, are bitwise those it gets alone, in any
// batch (other requests, other adapters, other lengths, any place in the batch, its prompt
// prefilled in any chunks), at some cost in throughput. Without it a backend may pick a
// product's kernel or its reduction split by the batch's shape, which moves a row's last bits.
type BatchInvariant interface {
	SetBatchInvariant(on bool)
}

// SetBatchInvariant turns deterministic mode on or off (BatchInvariant). A backend without the
// capability cannot promise it: asking it to is an error, never ignored.
func (r *Runner) SetBatchInvariant(on bool) error {
	bi, ok := r.B.(BatchInvariant)
	if !ok {
		if on {
			return fmt.Errorf("runner: backend %s cannot compute batch-invariantly (deterministic mode)", r.B.Name())
		}
		return nil
	}
	bi.SetBatchInvariant(on)
	return nil
}

// UploadAliaser is implemented by backends whose Upload may keep pointing into the caller's
// host data (the CPU backend reads the memory-mapped file in place): AliasesUploads reports
// whether it does, and the adapter cache then keeps the host copy alive while the device copy
// is in use. Backends without it copy.
type UploadAliaser interface {
	AliasesUploads() bool
}

// WeightCopier is implemented by backends whose uploads of a base model alias its file mapping
// (UploadAliaser) and that can copy its matrices into memory of their own instead (--no-mmap):
// CopyWeights points w's matrices at the copies, a tied head and embedding at one copy, and
// returns the bytes copied. The values are the same bits, so no result changes; the CPU backend
// does it to stream the weights from huge pages (cpu.Backend.CopyWeights).
type WeightCopier interface {
	CopyWeights(w *Weights) (int64, error)
}

// MaxSharedProducts bounds the products of one MatMulShared call: the three projections of q/k/v
// and, in routed steps, their three routers' gates (Runner.gatedProducts).
const MaxSharedProducts = 6

// SharedMatMuler is implemented by backends that compute the products of one input by several
// matrices (q/k/v, gate/up) together: the CPU in one parallel region instead of one per matrix
// (a batch-1 decode step spends as long handing a small matrix to its workers as streaming it),
// CUDA in one GEMV launch for few-row decode steps (k and v alone do not fill the GPU).
// MatMulShared is MatMul(outs[i], x, ws[i]) for every i, each output exactly as MatMul computes
// it, and returns true; or it does nothing and returns false (a shape or a switch its kernels do
// not take), and the runner calls MatMul for each. The answer may depend only on what the
// StepRecorder key fixes (row counts, the backend's own switches), so a recorded step replays
// the same calls. The runner applies biases and LoRA deltas afterwards, as after MatMul. A call
// has at most MaxSharedProducts products.
type SharedMatMuler interface {
	MatMulShared(outs []Tensor, x Tensor, ws []Tensor) bool
}

// SiLUMulMatMuler is implemented by backends that compute the SwiGLU activation and the products
// reading it in one call (CUDA: steps whose products go to cuBLAS, where the activation kernel
// writes the GEMMs' bf16 input itself instead of a conversion pass over it). SiLUMulMatMul is
// SiluMul(act, gate, up) then MatMul(outs[i], act, ws[i]) for every i (the down projection's
// product, and in routed steps its router gate's logits beside it: at most two products), act
// left as SiluMul leaves it (the down projection's LoRA shrink reads it), and returns true; or
// it does nothing and returns false. The answer may depend only on what the StepRecorder key
// fixes.
type SiLUMulMatMuler interface {
	SiLUMulMatMul(outs []Tensor, act, gate, up Tensor, ws []Tensor) bool
}

// LoRARoPEer is implemented by backends that add the q, k and v projections' LoRA deltas inside
// the RoPE + KV store that reads those projections (CUDA: steps whose products go to cuBLAS,
// LORAPLEX_LORA_ROPE), so no expand pass reads and writes the products' outputs before it.
// NormQKVLoRARoPE computes, on in's normed rows h under NormFuser's contract: q = h·ws[0]ᵀ plus
// segs[0]'s deltas, k and v likewise (ws[1], segs[1]; ws[2], segs[2]), then what
// DecodeFuser.RoPEStoreKV(layer, q, k, v, heads, kvHeads, table) does with them, leaving q, k, v
// and the cache as the unfused ops leave them, each within rounding of them. The forward pass
// offers it only where nothing comes between the products and RoPE (no bias, no Q/K norm). It
// does all of it and returns true, or nothing and returns false. The answer may depend only on
// what the StepRecorder key fixes.
type LoRARoPEer interface {
	NormQKVLoRARoPE(q, k, v Tensor, in NormedInput, ws [3]Tensor, segs [3][]LoRASeg, layer, heads, kvHeads int, table Tensor) bool
}

// LoRASwiGLUer is implemented by backends that add the gate and up projections' LoRA deltas
// inside the SwiGLU that reads those projections (CUDA: steps whose products go to cuBLAS,
// LORAPLEX_LORA_SWIGLU), so no expand pass reads and writes the products' outputs before it.
// NormGateUpLoRASwiGLU computes, on in's normed rows h under NormFuser's contract (the new
// residual in in.Next, h not stored where the caller reads it): gate = h·wGateᵀ plus segs[0]'s
// deltas, up = h·wUpᵀ plus segs[1]'s, act = silu(gate) * up and out = act·wDownᵀ, the additions
// of the unfused ops in their order, each within rounding of them; act is left for the down
// projection's own LoRA shrink, gate and up may hold the products without their deltas. out may
// be in.Delta (the forward pass passes the attention's output projection there and takes the
// down product back in the same buffer): in.Delta is read before out is written. It does all
// of it and returns true, or nothing and returns false. The answer may depend only on what the
// StepRecorder key fixes.
type LoRASwiGLUer interface {
	NormGateUpLoRASwiGLU(out, act, gate, up Tensor, in NormedInput, wGate, wUp, wDown Tensor, segs [2][]LoRASeg) bool
}

// DecodeFuser is implemented by backends with fused kernels for a decoder layer's small ops
// (cuda: few-row decode steps, where each launch costs about as much as the work it does). Each
// method does the whole of the unfused ops it names, with their result, and returns true, or does
// nothing and returns false (fusion off, or a shape its kernels do not take); the forward pass
// then runs the unfused ops itself. The answer may depend only on what the StepRecorder key
// fixes (row counts, the backend's own switches), so a recorded step replays the same calls.
type DecodeFuser interface {
	// RoPEStoreKV is RoPE(q as [N*heads, HeadDim]), RoPE(k as [N*kvHeads, HeadDim]) with table,
	// then StoreKV(layer, k, v): q and k are left rotated, as the three ops leave them.
	RoPEStoreKV(layer int, q, k, v Tensor, heads, kvHeads int, table Tensor) bool
	// GateUpSiLU writes act = silu(x · wGateᵀ) * (x · wUpᵀ): MatMul into gate, MatMul into up
	// and SiluMul, without gate and up ever being stored. The caller uses it only where neither
	// projection has a bias or a LoRA delta to add between the products and the activation.
	GateUpSiLU(act, x, wGate, wUp Tensor) bool
}

// NormedInput is the input of products fused with the RMSNorm before them (NormFuser): the rows
// h = RMSNorm(X + Delta)·Weight, or RMSNorm(X)·Weight when Delta has no rows (the first layer).
// With Delta, the new residual X + Delta is written to Next, which overlaps neither X nor Delta
// (the GPU writes it while other blocks still read X); X and Delta are not written.
type NormedInput struct {
	X, Delta, Next, Weight Tensor
	Eps                    float32
}

// NormFuser is implemented by backends that fold a decoder layer's RMSNorm, and the residual add
// before it, into the products that read the normed state h, which is then never stored (cuda:
// few-row decode steps, kernels/gemv.cu; LORAPLEX_NORM_GEMV). Each method does the whole of the
// ops it names and returns true, or does nothing and returns false (switch off, a shape its
// kernels do not take); the forward pass then runs the norm and the products itself. The forward
// pass calls it only where nothing else reads h: no LoRA segment on the group's projections and
// no routed sequence in the step (a LoRA shrink or a router gate reads h). A fused result may
// differ from the unfused one by rounding (the backend bounds it), the new residual may not. The
// answer may depend only on what the StepRecorder key fixes, so a recorded step replays the same
// calls.
type NormFuser interface {
	// NormMatMulShared is MatMulShared(outs, h, ws) of in's normed rows h (every product done).
	NormMatMulShared(outs []Tensor, in NormedInput, ws []Tensor) bool
	// NormGateUpSiLU is GateUpSiLU(act, h, wGate, wUp) of in's normed rows h.
	NormGateUpSiLU(act Tensor, in NormedInput, wGate, wUp Tensor) bool
}

// NormKeeper is implemented by backends that fold a decoder layer's RMSNorm (and the residual
// add before it) into the products that read the normed state h while keeping h for what else
// reads it: a routed step's router shrinks (CUDA: steps whose products go to cuBLAS, where one
// norm kernel writes the products' bf16 input and h in fp32). NormKeptMatMulShared is
// NormMatMulShared(outs, in, ws) under NormFuser's contract (the new residual in in.Next) that
// also returns h, in's normed rows in fp32, in a buffer of the backend's that stays valid until
// its next call of a fusion that keeps normed rows (NormKeeper, LoRAFolder, LoRASwiGLUer,
// LoRARoPEer), and true; or it does nothing and returns false. The answer may depend only on
// what the StepRecorder key fixes.
type NormKeeper interface {
	NormKeptMatMulShared(outs []Tensor, in NormedInput, ws []Tensor) (h Tensor, ok bool)
}

// LoRAFolder is implemented by backends that fold LoRA shrinks into the base products' call
// (cuda: where one segment covers all of a projection's rows in a batch-1 step, i.e. one
// adapter, each A factor streams beside the weights as more products, LORAPLEX_LORA_FOLD), or
// the norm before them into one call with the products and the deltas (cuda: larger steps,
// whose norm keeps its fp32 rows for the shrinks, LORAPLEX_NORM_KEEP). For every i,
// FoldedProducts computes outs[i] = x·ws[i]ᵀ, then adds biases[i] where it has rows, then
// segs[i]'s LoRA delta (segs[i] any of projection i's segment lists, empty included): the
// additions and order of MatMul, AddBias and LoRA, each output within rounding of them.
// NormFoldedProducts is the same on in's normed rows under NormFuser's contract (the new
// residual in in.Next, h never stored where the caller can read it). Each does all of it and
// returns true, or nothing and returns false (a layout it does not fold). The answer may depend
// only on what the StepRecorder key fixes, so a recorded step replays the same calls.
type LoRAFolder interface {
	FoldedProducts(outs []Tensor, x Tensor, ws, biases []Tensor, segs [][]LoRASeg) bool
	NormFoldedProducts(outs []Tensor, in NormedInput, ws, biases []Tensor, segs [][]LoRASeg) bool
}

// LoRAGrouper is implemented by backends that apply the LoRA segments of several projections
// reading the same input (q/k/v, gate/up) in one go: LoRAGroup(outs, x, segs) is
// LoRA(outs[i], x, segs[i]) for every i (segs[i] may be empty), or returns false having done
// nothing. It is called after every base product of the group, so each output receives exactly
// the additions of the unfused ops.
type LoRAGrouper interface {
	LoRAGroup(outs []Tensor, x Tensor, segs [][]LoRASeg) bool
}

// backendErr returns b's sticky failure (FailureReporter), nil when it has none.
func backendErr(b Backend) error {
	if f, ok := b.(FailureReporter); ok {
		return f.Err()
	}
	return nil
}

// AliasesUploads reports whether b's uploads alias host memory (UploadAliaser).
func AliasesUploads(b Backend) bool {
	a, ok := b.(UploadAliaser)
	return ok && a.AliasesUploads()
}

// Backend is everything the forward pass needs from a device. The forward pass (forward.go) is
// written once against it; cpu/ and cuda/ implement it. Methods check shapes and panic on a
// mismatch: shapes are the forward pass's responsibility, and a mismatch is a bug, not input.
type Backend interface {
	Name() string

	// Upload turns host data into a weight tensor of the given shape. The backend may keep
	// referencing h.Data (the CPU backend uses memory-mapped F32/BF16 data in place).
	// Tensors whose h.Shape is 1-D (norm weights, biases) are vectors and always kept in F32;
	// matrices may be stored in a narrower type (the CUDA backend keeps them in BF16).
	Upload(h HostTensor, rows, cols int) (Tensor, error)
	// Free releases a tensor made by Upload or Alloc (adapters come and go).
	Free(t Tensor)
	// Alloc makes a zeroed F32 activation tensor.
	Alloc(rows, cols int) Tensor
	// Write copies host values into an F32 tensor made by Alloc (tables such as RoPE's).
	Write(t Tensor, src []float32) error
	// AllocKV makes the paged KV cache; called once.
	AllocKV(spec KVSpec) error

	// Prepare hands the backend the step's metadata before the ops that use it.
	Prepare(s *Step) error

	// Embed writes table rows for s.Tokens into out.
	Embed(out, table Tensor)
	// MatMul computes out = x · wᵀ (w is [out.Cols, x.Cols]).
	MatMul(out, x, w Tensor)
	// AddBias adds the 1 x Cols bias to every row of x.
	AddBias(x, bias Tensor)
	// RMSNorm computes out = x / rms(x) * w per row (x and out may alias).
	RMSNorm(out, x, w Tensor, eps float32)
	// AddRMSNorm fuses the residual add with the next norm: x += delta; out = RMSNorm(x) * w.
	AddRMSNorm(x, delta, out, w Tensor, eps float32)
	// RoPE rotates each head of x ([N*heads, HeadDim]) by its row's position, rotate-half style;
	// table is [maxPositions, HeadDim] holding cos in the first half of a row and sin in the second.
	RoPE(x Tensor, heads int, table Tensor)
	// StoreKV writes k and v ([N, KVHeads*HeadDim]) into layer's cache at the step's slots.
	StoreKV(layer int, k, v Tensor)
	// Attention computes causal attention of q ([N, Heads*HeadDim]) over each sequence's cached
	// keys and values (which include this step's) into out ([N, Heads*HeadDim]).
	Attention(out, q Tensor, layer int, p AttnParams)
	// SiluMul computes out = silu(gate) * up.
	SiluMul(out, gate, up Tensor)
	// LoRA adds each segment's low-rank delta into out.
	LoRA(out, x Tensor, segs []LoRASeg)
	// GatherRows copies x's rows listed in s.LogitRows into out.
	GatherRows(out, x Tensor)
	// Read copies a tensor to host memory (len(dst) == Rows*Cols).
	Read(t Tensor, dst []float32) error
}
