//go:build cuda

package cuda

import (
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// The sampler's buffers are sized once (ReserveSampling, as NewRunner calls it) and never
// move afterwards: steps of constrained rows with distinct masks, shared masks and the most
// logit_bias entries reuse the same pinned and device buffers, and Sample allocates nothing.
func TestSampleBuffersReservedOnce(t *testing.T) {
	b := newDevice(t)
	const rows, vocab = 64, 128256
	if err := b.ReserveSampling(rows, vocab); err != nil {
		t.Fatal(err)
	}
	sb := samplerBufs(b)
	host, dev, maskHost, maskDev := sb.host, sb.dev, sb.maskHost, sb.maskDev
	r := rand.New(rand.NewPCG(1, 2))
	logits := make([]float32, rows*vocab)
	for i := range logits {
		logits[i] = float32(r.NormFloat64())
	}
	lt := b.Alloc(rows, vocab)
	defer b.Free(lt)
	shared := make([]uint64, (vocab+63)/64)
	for i := range shared {
		shared[i] = r.Uint64()
	}
	in := make([]model.SampleRow, rows)
	for i := range in {
		in[i] = model.SampleRow{Temperature: 1, TopP: 0.9, Logprobs: 5, U: r.Float32()}
		switch i % 3 {
		case 0:
			in[i].Allowed = shared
		case 1:
			in[i].Allowed = make([]uint64, (vocab+63)/64)
			for w := range in[i].Allowed {
				in[i].Allowed[w] = r.Uint64()
			}
		}
		if i%4 == 0 {
			in[i].Bias = make([]model.TokenBias, model.MaxSampleBias)
			for j := range in[i].Bias {
				in[i].Bias[j] = model.TokenBias{Token: int32(r.IntN(vocab)), Bias: 1}
			}
		}
	}
	out := make([]model.SampleResult, rows)
	for i := range out {
		out[i].Top = make([]model.TokenLogprob, 0, model.MaxSampleLogprobs)
	}
	step := func() {
		if err := b.Write(lt, logits); err != nil {
			t.Fatal(err)
		}
		if err := b.Sample(lt, in, out); err != nil {
			t.Fatal(err)
		}
	}
	step()
	for i, o := range out {
		if m := in[i].Allowed; m != nil && m[o.Token/64]>>(o.Token%64)&1 == 0 {
			t.Errorf("row %d: token %d outside its mask", i, o.Token)
		}
	}
	if a := testing.AllocsPerRun(5, func() {
		if err := b.Sample(lt, in, out); err != nil {
			t.Fatal(err)
		}
	}); a > 0 {
		t.Errorf("%v allocations per Sample", a)
	}
	if sb.host != host || sb.dev != dev || sb.maskHost != maskHost || sb.maskDev != maskDev {
		t.Error("the sampler's buffers moved after ReserveSampling")
	}
}
