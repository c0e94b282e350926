//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"unsafe"

	"github.com/loraplex/loraplex/model"
)

// The sampler's capabilities beyond model.DeviceSampler (model/doc.go lists them all): the
// kernel applies allowed-token masks and logit_bias, and its buffers are sized up front.
var (
	_ model.TokenMasker    = (*Backend)(nil)
	_ model.LogitBiaser    = (*Backend)(nil)
	_ model.SampleReserver = (*Backend)(nil)
)

// MasksTokens implements model.TokenMasker: the sampling kernel applies SampleRow.Allowed.
func (b *Backend) MasksTokens() bool { return true }

// AppliesLogitBias implements model.LogitBiaser: the sampling kernel adds SampleRow.Bias.
func (b *Backend) AppliesLogitBias() bool { return true }

// ReserveSampling implements model.SampleReserver: the pinned staging buffer and its device
// twin get room for rows rows' parameters, results and typical history, and the mask buffers
// room for an allowed-token bitmap per row, so that no step allocates.
func (b *Backend) ReserveSampling(rows, vocab int) error {
	if rows <= 0 || vocab <= 0 || vocab > model.MaxSampleVocab {
		return fmt.Errorf("cuda: ReserveSampling(%d rows, vocabulary %d)", rows, vocab)
	}
	sb := samplerBufs(b)
	if cap(sb.sent) < rows {
		sb.sent = make([]*uint64, 0, rows)
	}
	if need := stagingBytes(rows, rows*reservedWordsPerRow); need > sb.cap {
		if err := sb.grow(b, need); err != nil {
			return err
		}
	}
	return sb.reserveMasks(b, rows*maskWords(vocab))
}

// reservedWordsPerRow is the staging room ReserveSampling gives each row's history, banned and
// bias entries (3, 2 and 3 words each); a step with more grows the buffer once.
const reservedWordsPerRow = 1024

// maskWords is the length of an allowed-token mask over vocab tokens (model.SampleRow.Allowed).
func maskWords(vocab int) int { return (vocab + 63) / 64 }

// stagingBytes is the staging layout's size: parameters, words, then results.
func stagingBytes(rows, words int) int {
	return align16(align16(rows*sampleRowBytes)+4*words) + rows*sampleResultBytes
}

// Sample implements model.DeviceSampler (kernels/sampling.cu): the rows' parameters, history,
// banned ids and logit_bias entries are packed into one pinned buffer and copied in one
// transfer, the constrained rows' masks (each distinct mask once) in a second, one launch
// samples every row, and one transfer brings back tokens and logprobs. It runs after EndStep,
// outside recorded graphs, and synchronises the stream before returning.
func (b *Backend) Sample(logits model.Tensor, rows []model.SampleRow, out []model.SampleResult) error {
	if logits.DType != model.F32 || logits.Rows != len(rows) || len(out) != len(rows) {
		return fmt.Errorf("cuda: Sample of %s %s logits for %d rows into %d results", logits.Shape(), logits.DType, len(rows), len(out))
	}
	// Mask lengths, token ids and bias counts are checked here, before anything reaches the
	// kernel (which trusts them).
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
	words, masked := 0, 0
	for i := range rows {
		words += 3*len(rows[i].Hist) + 2*len(rows[i].Banned) + 3*len(rows[i].Bias)
		if rows[i].Allowed != nil {
			masked++
		}
	}
	n, mw := len(rows), maskWords(logits.Cols)
	wordsOff := align16(n * sampleRowBytes)
	resOff := align16(wordsOff + 4*words)
	sb := samplerBufs(b)
	if total := stagingBytes(n, words); total > sb.cap {
		if err := sb.grow(b, total); err != nil {
			return err
		}
	}
	if masked*mw > sb.maskCap {
		if err := sb.reserveMasks(b, n*mw); err != nil {
			return err
		}
	}
	params := unsafe.Slice((*C.lp_sample_row)(sb.host), n)
	w := unsafe.Slice((*int32)(unsafe.Add(sb.host, wordsOff)), words)
	masks := unsafe.Slice((*uint64)(sb.maskHost), sb.maskCap)
	k := 0
	for i := range rows {
		r := &rows[i]
		p := &params[i]
		*p = C.lp_sample_row{temperature: C.float(r.Temperature), top_p: C.float(r.TopP), min_p: C.float(r.MinP),
			repetition: C.float(r.RepetitionPenalty), presence: C.float(r.PresencePenalty), frequency: C.float(r.FrequencyPenalty),
			u: C.float(r.U), top_k: C.int(max(r.TopK, 0)), logprobs: C.int(max(r.Logprobs, -1)), hist: C.int(k), num_hist: C.int(len(r.Hist)),
			allowed: -1}
		for _, h := range r.Hist {
			w[k], w[k+1], w[k+2] = h.Token, h.Count, 0
			k += 3
		}
		p.banned, p.num_banned = C.int(k), C.int(len(r.Banned))
		for _, t := range r.Banned {
			w[k], w[k+1] = t, 0
			k += 2
		}
		p.bias, p.num_bias = C.int(k), C.int(len(r.Bias))
		for _, e := range r.Bias {
			w[k], w[k+1], w[k+2] = e.Token, int32(math.Float32bits(e.Bias)), 0
			k += 3
		}
		if r.Allowed != nil {
			// Rows in the same grammar state share one mask (model.SampleRow.Allowed): it is
			// copied once and they read the same words. Its uint64 words are the kernel's
			// 32-bit words in little-endian order, so bit i%32 of word i/32 is token i.
			j := slices.Index(sb.sent, unsafe.SliceData(r.Allowed))
			if j < 0 {
				j = len(sb.sent)
				sb.sent = append(sb.sent, unsafe.SliceData(r.Allowed))
				copy(masks[j*mw:(j+1)*mw], r.Allowed)
			}
			p.allowed = C.int(2 * j * mw)
		}
	}
	sent := len(sb.sent)
	clear(sb.sent) // drop the references to the step's masks
	sb.sent = sb.sent[:0]
	dev := C.uintptr_t(sb.dev)
	if !b.ok("sample params", C.s_htod(dev, sb.host, C.size_t(resOff), b.work())) {
		return b.Err()
	}
	if sent > 0 && !b.ok("sample masks", C.s_htod(C.uintptr_t(sb.maskDev), sb.maskHost, C.size_t(8*sent*mw), b.work())) {
		return b.Err()
	}
	if !b.ok("sample", C.s_sample(ptr(logits), C.int(n), C.int(logits.Cols), dev, dev+C.uintptr_t(wordsOff), C.uintptr_t(sb.maskDev),
		dev+C.uintptr_t(resOff), b.work())) {
		return b.Err()
	}
	if !b.ok("sample results", C.s_dtoh(unsafe.Add(sb.host, resOff), dev+C.uintptr_t(resOff), C.size_t(n*sampleResultBytes), b.work())) {
		return b.Err()
	}
	if !b.ok("sample sync", C.s_stream_sync(b.work())) {
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

// sampleBuf is a backend's pinned staging buffer and its device twin, and the pinned and
// device buffers of the allowed-token masks, sized by ReserveSampling and grown only when a
// step needs more (never per step once sized).
// (Kept beside the Backend rather than in it; it lives as long as the backend.)
type sampleBuf struct {
	host unsafe.Pointer // cudaMallocHost memory, not Go memory
	dev  uintptr
	cap  int

	maskHost unsafe.Pointer // cudaMallocHost memory: maskCap uint64 words
	maskDev  uintptr
	maskCap  int
	sent     []*uint64 // the masks copied in this step, in order (reused)
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

// reserveMasks reallocates the mask buffers for at least words uint64 words (of as many rows'
// masks); the stream is idle (every Sample ends with a sync).
func (sb *sampleBuf) reserveMasks(b *Backend, words int) error {
	if words <= sb.maskCap {
		return nil
	}
	if sb.maskHost != nil {
		C.lp_free_host(sb.maskHost)
		C.s_free(C.uintptr_t(sb.maskDev))
		sb.maskHost, sb.maskDev, sb.maskCap = nil, 0, 0
	}
	var hp unsafe.Pointer
	if err := cudaError("pinned alloc", C.lp_malloc_host(&hp, C.size_t(8*words))); err != nil {
		return err
	}
	d, err := b.malloc(8 * words)
	if err != nil {
		C.lp_free_host(hp)
		return err
	}
	sb.maskHost, sb.maskDev, sb.maskCap = hp, d, words
	return nil
}
