// Package cpu is the pure-Go model.Backend: float32 activations, F32 or BF16 weights read in
// place from the memory-mapped checkpoint, goroutine-parallel kernels. It runs everywhere, so
// it is both the fallback device and the oracle the CUDA backend is tested against.
package cpu

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/loraplex/loraplex/model"
)

// Backend implements model.Backend on the host.
type Backend struct {
	workers int
	pool    *pool
	step    *model.Step
	kv      model.KVSpec
	kcache  [][]float32 // per layer: [Pages*PageSize, KVHeads*HeadDim]
	vcache  [][]float32
	scratch [][]float32 // per worker: attention scores
	loraBuf []float32
	attn    attnJob
	multi   multiJob
	panels  [][]float32 // per worker: gemm's packed weight panel
	faults  *faultLatch
	// segsApart: a LoRA segment a sequence even for adjacent ones on one adapter (SetSegmentMerge).
	segsApart bool
	// batchInvariant: deterministic mode (SetBatchInvariant).
	batchInvariant bool
}

// New makes a CPU backend using up to threads goroutines (0 = GOMAXPROCS).
func New(threads int) *Backend {
	if threads <= 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	faults := new(faultLatch)
	b := &Backend{workers: threads, pool: newPool(threads, faults), scratch: make([][]float32, threads),
		panels: make([][]float32, threads), faults: faults}
	b.attn.fn, b.multi.fn = b.attn.run, b.multi.run
	return b
}

// Close stops the worker goroutines.
func (b *Backend) Close() { b.pool.close() }

func (b *Backend) Name() string { return fmt.Sprintf("cpu(%d threads)", b.workers) }

// Upload keeps F32 and BF16 matrices where they are (usually the mmapped file) and converts
// F16, and every 1-D tensor (norm weights, biases), to F32.
func (b *Backend) Upload(h model.HostTensor, rows, cols int) (model.Tensor, error) {
	n := rows * cols
	if len(h.Data) != n*h.DType.Size() {
		return model.Tensor{}, fmt.Errorf("cpu: %s holds %d bytes, want %d for %dx%d %s", h.Name, len(h.Data), n*h.DType.Size(), rows, cols, h.DType)
	}
	t := model.Tensor{Rows: rows, Cols: cols, DType: model.F32}
	if n == 0 {
		t.Buf = []float32{}
		return t, nil
	}
	p := unsafe.Pointer(&h.Data[0])
	switch {
	case h.DType == model.F32:
		if uintptr(p)%4 == 0 {
			t.Buf = unsafe.Slice((*float32)(p), n)
		} else {
			f := make([]float32, n)
			for i := range f {
				f[i] = h.At(i)
			}
			t.Buf = f
		}
	case h.DType == model.BF16 && len(h.Shape) != 1:
		t.DType = model.BF16
		if uintptr(p)%2 == 0 {
			t.Buf = unsafe.Slice((*uint16)(p), n)
		} else {
			u := make([]uint16, n)
			for i := range u {
				u[i] = uint16(h.Data[2*i]) | uint16(h.Data[2*i+1])<<8
			}
			t.Buf = u
		}
	case h.DType == model.BF16:
		f := make([]float32, n)
		for i := range f {
			f[i] = h.At(i)
		}
		t.Buf = f
	case h.DType == model.F16:
		f := make([]float32, n)
		for i := range f {
			f[i] = h.At(i)
		}
		t.Buf = f
	default:
		return model.Tensor{}, fmt.Errorf("cpu: %s: dtype %s not supported", h.Name, h.DType)
	}
	return t, nil
}

// Free drops the reference; the garbage collector (or the file's unmap) reclaims the memory.
func (b *Backend) Free(t model.Tensor) {}

func (b *Backend) Alloc(rows, cols int) model.Tensor {
	return model.Tensor{Rows: rows, Cols: cols, DType: model.F32, Buf: make([]float32, rows*cols)}
}

func (b *Backend) Write(t model.Tensor, src []float32) error {
	if len(src) != t.Rows*t.Cols {
		return fmt.Errorf("cpu: Write of %d floats into %s", len(src), t.Shape())
	}
	copy(f32(t), src)
	return nil
}

func (b *Backend) AllocKV(spec model.KVSpec) error {
	slots, width := spec.Pages*spec.PageSize, spec.KVHeads*spec.HeadDim
	if slots <= 0 || width <= 0 || spec.Layers <= 0 {
		return fmt.Errorf("cpu: bad KV spec %+v", spec)
	}
	b.kv = spec
	b.kcache, b.vcache = make([][]float32, spec.Layers), make([][]float32, spec.Layers)
	for l := range b.kcache {
		b.kcache[l] = make([]float32, slots*width)
		b.vcache[l] = make([]float32, slots*width)
	}
	return nil
}

func (b *Backend) Prepare(s *model.Step) error {
	if err := model.CheckStep(s, b.kv); err != nil {
		return fmt.Errorf("cpu: %w", err)
	}
	b.step = s
	return nil
}

func (b *Backend) Read(t model.Tensor, dst []float32) error {
	if err := b.Err(); err != nil {
		return err
	}
	if len(dst) != t.Rows*t.Cols {
		return fmt.Errorf("cpu: Read of %s into %d floats", t.Shape(), len(dst))
	}
	copy(dst, f32(t))
	return nil
}

// f32 returns the tensor's elements; it panics if the tensor is not F32.
func f32(t model.Tensor) []float32 {
	return t.Buf.([]float32)[t.Off : t.Off+t.Rows*t.Cols]
}

func bf16(t model.Tensor) []uint16 {
	return t.Buf.([]uint16)[t.Off : t.Off+t.Rows*t.Cols]
}

func checkRows(op string, a, b model.Tensor) {
	if a.Rows != b.Rows {
		panic(fmt.Sprintf("cpu: %s: %s vs %s", op, a.Shape(), b.Shape()))
	}
}

// AliasesUploads says Upload may keep pointing into the caller's host data (the base model's
// file mapping, an adapter's private host copy) instead of copying it, so the adapter cache must keep a host copy alive while its
// device copy is in use.
func (b *Backend) AliasesUploads() bool { return true }

var _ model.SegmentMerger = (*Backend)(nil)

// MergesSegments implements model.SegmentMerger: a run of sequences on one adapter is one LoRA
// segment, two gemm calls for the run (each fanned out to every worker) where a segment per
// sequence made two per sequence. Deterministic mode computes a row alike in any segment
// (SetBatchInvariant). On unless SetSegmentMerge turned it off.
func (b *Backend) MergesSegments() bool { return !b.segsApart }

// SetSegmentMerge turns MergesSegments on or off for the following steps (for benchmarks that
// compare both layouts: BenchmarkDecodeOneAdapter).
func (b *Backend) SetSegmentMerge(on bool) { b.segsApart = !on }

var _ model.BatchInvariant = (*Backend)(nil)

// SetBatchInvariant implements model.BatchInvariant. Attention, norms, RoPE and sampling
// already compute each row on its own; only products are batch-dependent: gemm runs rows in
// groups of four through a kernel that shares each weight load among them (dotBF16x4, its
// AVX-512 form summing in 16 lanes) and the rest alone (dotBF16), whose sums round
// differently, so a row's result depended on the batch's size and the row's place in it (and
// LoRA's shrink and expand on its segment's). With the mode on every row takes the one-row
// kernel: the weight tiles still stay in cache across rows, but each row reloads them from
// there. Call it before the step it should govern, never during one.
func (b *Backend) SetBatchInvariant(on bool) { b.batchInvariant = on }
