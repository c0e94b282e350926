package cpu

import (
	"fmt"
	"sync"

	"github.com/loraplex/loraplex/model"
)

// samplers hold model.Sampler scratch between steps (a vocabulary's worth of candidates), so
// sampling allocates nothing once warm. A pool rather than a Backend field: Sample may run on
// several backends at once, and the scratch is only needed while it runs.
var _ model.DeviceSampler = (*Backend)(nil)

// MasksTokens says Sample honours SampleRow.Allowed (model.Sampler applies it).
func (b *Backend) MasksTokens() bool { return true }

var samplers = sync.Pool{New: func() any { return new(model.Sampler) }}

// Sample implements model.DeviceSampler: the CPU samples what the CUDA kernel samples
// (model.SampleReference, computed by model.Sampler), with the same parameters and the same
// U, so a seeded request picks the same tokens on both backends and the CPU is the oracle for
// sampling as it is for the forward pass. logits' rows are modified in place.
func (b *Backend) Sample(logits model.Tensor, rows []model.SampleRow, out []model.SampleResult) error {
	// The step's only read-back: a fault reading the weights during it (fault.go) fails the
	// step here, as Read does, rather than sampling logits the fault left half computed.
	if err := b.Err(); err != nil {
		return err
	}
	if logits.DType != model.F32 || logits.Rows != len(rows) || len(out) != len(rows) {
		return fmt.Errorf("cpu: Sample of %s %s logits for %d rows into %d results", logits.Shape(), logits.DType, len(rows), len(out))
	}
	if err := model.CheckSampleRows(rows, logits.Cols); err != nil {
		return fmt.Errorf("cpu: %w", err)
	}
	if len(rows) == 0 {
		return nil
	}
	l, V := f32(logits), logits.Cols
	s := samplers.Get().(*model.Sampler)
	defer samplers.Put(s)
	for i := range rows {
		s.Sample(l[i*V:(i+1)*V], &rows[i], &out[i])
	}
	return nil
}

var _ model.LogitBiaser = (*Backend)(nil)

// AppliesLogitBias implements model.LogitBiaser: model.Sampler applies SampleRow.Bias.
func (b *Backend) AppliesLogitBias() bool { return true }
