//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/loraplex/loraplex/model"
)

// Sample implements model.DeviceSampler (kernels/sampling.cu): the rows' parameters, history
// and banned ids are packed into one pinned buffer and copied in one transfer, one launch
// samples every row, and one transfer brings back tokens and logprobs. It runs after EndStep,
// outside recorded graphs, and synchronises the stream before returning.
func (b *Backend) Sample(logits model.Tensor, rows []model.SampleRow, out []model.SampleResult) error {
	if logits.DType != model.F32 || logits.Rows != len(rows) || len(out) != len(rows) {
		return fmt.Errorf("cuda: Sample of %s %s logits for %d rows into %d results", logits.Shape(), logits.DType, len(rows), len(out))
	}
	if err := model.CheckSampleRows(rows, logits.Cols); err != nil {
		return fmt.Errorf("cuda: %w", err)
	}
	if err := b.Err(); err != nil {
		return err
	}
	if b.mode != modeDirect {
		return fmt.Errorf("cuda: Sample inside a recorded step (call it after EndStep)")
	}
	if len(rows) == 0 {
		return nil
	}
	words := 0
	for i := range rows {
		if rows[i].Allowed != nil {
			// The kernel has no allowed-token mask yet; the backend does not implement
			// model.TokenMasker, so the engine never sends one.
			return fmt.Errorf("cuda: Sample of row %d with an allowed-token mask (constrained decoding is CPU-only)", i)
		}
		words += 3*len(rows[i].Hist) + 2*len(rows[i].Banned)
	}
	n := len(rows)
	wordsOff := align16(n * sampleRowBytes)
	resOff := align16(wordsOff + 4*words)
	total := resOff + n*sampleResultBytes
	sb := samplerBufs(b)
	if total > sb.cap {
		if err := sb.grow(b, total); err != nil {
			return err
		}
	}
	params := unsafe.Slice((*C.lp_sample_row)(sb.host), n)
	w := unsafe.Slice((*int32)(unsafe.Add(sb.host, wordsOff)), words)
	k := 0
	for i := range rows {
		r := &rows[i]
		p := &params[i]
		*p = C.lp_sample_row{temperature: C.float(r.Temperature), top_p: C.float(r.TopP), min_p: C.float(r.MinP),
			repetition: C.float(r.RepetitionPenalty), presence: C.float(r.PresencePenalty), frequency: C.float(r.FrequencyPenalty),
			u: C.float(r.U), top_k: C.int(max(r.TopK, 0)), logprobs: C.int(max(r.Logprobs, -1)), hist: C.int(k), num_hist: C.int(len(r.Hist))}
		for _, h := range r.Hist {
			w[k], w[k+1], w[k+2] = h.Token, h.Count, 0
			k += 3
		}
		p.banned, p.num_banned = C.int(k), C.int(len(r.Banned))
		for _, t := range r.Banned {
			w[k], w[k+1] = t, 0
			k += 2
		}
	}
	dev := C.uintptr_t(sb.dev)
	if !b.ok("sample params", C.s_htod(dev, sb.host, C.size_t(resOff), b.stream)) {
		return b.Err()
	}
	if !b.ok("sample", C.s_sample(ptr(logits), C.int(n), C.int(logits.Cols), dev, dev+C.uintptr_t(wordsOff), dev+C.uintptr_t(resOff), b.stream)) {
		return b.Err()
	}
	if !b.ok("sample results", C.s_dtoh(unsafe.Add(sb.host, resOff), dev+C.uintptr_t(resOff), C.size_t(n*sampleResultBytes), b.stream)) {
		return b.Err()
	}
	if !b.ok("sample sync", C.s_stream_sync(b.stream)) {
		return b.Err()
	}
	res := unsafe.Slice((*C.lp_sample_result)(unsafe.Add(sb.host, resOff)), n)
	for i := range res {
		r := &res[i]
		o := &out[i]
		o.Token, o.Logprob, o.Top = int32(r.token), float32(r.logprob), o.Top[:0]
		for j := 0; j < int(r.num_top) && j < len(r.top); j++ {
			o.Top = append(o.Top, model.TokenLogprob{Token: int32(r.top[j].token), Logprob: float32(r.top[j].logprob)})
		}
	}
	return nil
}

// The rows' parameters and results are C's lp_sample_row and lp_sample_result
// (kernels/loraplex_kernels.h), written and read in place in the pinned buffer.
const (
	sampleRowBytes    = int(C.sizeof_lp_sample_row)
	sampleResultBytes = int(C.sizeof_lp_sample_result)
)

func init() {
	// model (pure Go) bounds logprobs requests; the kernel's result holds LP_SAMPLE_MAX_TOP.
	if model.MaxSampleLogprobs != C.LP_SAMPLE_MAX_TOP {
		panic("cuda: model.MaxSampleLogprobs differs from the kernel's LP_SAMPLE_MAX_TOP")
	}
}

func align16(n int) int { return (n + 15) &^ 15 }

// sampleBuf is a backend's pinned staging buffer and its device twin, grown on demand.
// (Kept beside the Backend rather than in it; it lives as long as the backend.)
type sampleBuf struct {
	host unsafe.Pointer // cudaMallocHost memory, not Go memory
	dev  uintptr
	cap  int
}

var (
	sampleBufsMu sync.Mutex
	sampleBufsOf = map[*Backend]*sampleBuf{}
)

func samplerBufs(b *Backend) *sampleBuf {
	sampleBufsMu.Lock()
	defer sampleBufsMu.Unlock()
	sb := sampleBufsOf[b]
	if sb == nil {
		sb = &sampleBuf{}
		sampleBufsOf[b] = sb
	}
	return sb
}

// grow reallocates; the stream is idle (every Sample ends with a sync).
func (sb *sampleBuf) grow(b *Backend, need int) error {
	need = max(2*need, 64<<10)
	if sb.host != nil {
		C.lp_free_host(sb.host)
		C.s_free(C.uintptr_t(sb.dev))
		sb.host, sb.dev, sb.cap = nil, 0, 0
	}
	var hp unsafe.Pointer
	if err := cudaError("pinned alloc", C.lp_malloc_host(&hp, C.size_t(need))); err != nil {
		return err
	}
	d, err := b.malloc(need)
	if err != nil {
		C.lp_free_host(hp)
		return err
	}
	sb.host, sb.dev, sb.cap = hp, d, need
	return nil
}
