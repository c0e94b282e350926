package adaptercache

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// An adapter's tensors live in private memory once loaded. Computing from the file's mapping
// made the adapter's file part of the running server: a plain cp over it (which truncates it
// first) faulted the next forward pass that read the adapter (SIGBUS, the whole process gone),
// and a file rewritten with other values silently changed what the adapter computes. So the
// loaders copy every factor (and every encoded stream left for the device) out of the mapping,
// through safetensors.CopyMapped, which turns a file that shrinks during the copy into an
// error instead of a crash. Each factor's values are checked right after its copy, while they
// are in cache. The cost (bench/coldload): a PEFT folder's load now reads its file, where it
// used to map it and leave the reading to the first forward passes (CPU) or the upload (CUDA).

// ownTensors moves every factor's data into one private buffer, checking each factor's values
// (checkFinite's rule) right after its copy, while it is in cache.
func ownTensors(a *model.HostAdapter) error {
	var tensors []*model.HostTensor
	size := 0
	for l := range a.Modules {
		for _, m := range a.Modules[l] {
			if m != nil {
				tensors = append(tensors, &m.A, &m.B)
				size += align8(len(m.A.Data)) + align8(len(m.B.Data))
			}
		}
	}
	// One allocation, every tensor at an 8-byte aligned offset (the CPU backend computes F32 and
	// BF16 factors in place when they are aligned to their element size).
	buf := make([]byte, size)
	for _, t := range tensors {
		n := len(t.Data)
		if err := safetensors.CopyMapped(buf[:n], t.Data); err != nil {
			return &AdapterError{Adapter: a.Name, File: a.Path, Tensor: t.Name, Err: err}
		}
		t.Data, buf = buf[:n:n], buf[align8(n):]
		if err := checkTensorFinite(a, t); err != nil {
			return err
		}
	}
	return nil
}

func align8(n int) int { return (n + 7) &^ 7 }

// errNonFinite is wrapped by the error for a factor holding NaN or an infinity.
var errNonFinite = errors.New("holds a value that is not finite")

// checkFinite refuses an adapter with a NaN or an infinity in any factor, naming the tensor and
// the element: one such value turns the logits of every request on the adapter into NaN.
// Factors left encoded for the device are skipped: their Data is untouched zero pages (reading
// them would cost a scan of the whole decoded size), and the device decoder refuses a q4 / q8
// group maximum that is not finite as a corrupt stream, which is the only way such a stream
// can hold one.
func checkFinite(a *model.HostAdapter) error {
	var ts []*model.HostTensor
	for l := range a.Modules {
		for _, m := range a.Modules[l] {
			if m == nil {
				continue
			}
			for _, t := range []*model.HostTensor{&m.A, &m.B} {
				if t.Encoded == nil {
					ts = append(ts, t)
				}
			}
		}
	}
	// On all CPUs: a decoded adapter is out of cache by now (84 MB for Llama-3-8B at rank 16).
	errs := make([]error, len(ts))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(ts)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(ts); i = int(next.Add(1) - 1) {
				errs[i] = checkTensorFinite(a, ts[i])
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err // the first in module order
		}
	}
	return nil
}

// checkTensorFinite refuses a factor holding NaN or an infinity, naming it and the element.
func checkTensorFinite(a *model.HostAdapter, t *model.HostTensor) error {
	if i := t.FirstNonFinite(); i >= 0 {
		return &AdapterError{Adapter: a.Name, File: a.Path, Tensor: t.Name,
			Err: fmt.Errorf("%w: element %d is %v", errNonFinite, i, t.At(i))}
	}
	return nil
}

// DefaultMaxRank is the largest LoRA rank the kernels implement (LP_MAX_LORA_RANK in
// kernels/shapes.h: the shrink writes one scratch row of at most that many values). It is the
// default of Options.MaxRank (--max-lora-rank).
const DefaultMaxRank = 256

// checkRank refuses an adapter with a module of rank above maxRank, naming the module's lora_A.
func checkRank(a *model.HostAdapter, maxRank int) error {
	for l := range a.Modules {
		for _, m := range a.Modules[l] {
			if m != nil && m.Rank > maxRank {
				return &AdapterError{Adapter: a.Name, File: a.Path, Tensor: m.A.Name,
					Err: fmt.Errorf("%w: rank %d is above the server's limit of %d (--max-lora-rank)", model.ErrUnsupported, m.Rank, maxRank)}
			}
		}
	}
	return nil
}
