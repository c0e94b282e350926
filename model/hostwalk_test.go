package model_test

import (
	"fmt"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// shapeBackend is a backend of shapes only: every op returns at once and no tensor holds
// memory, so a step through it costs what the forward pass's host walk costs. It records steps
// as CUDA does (StepRecorder: every keyed step replays) and takes LoRA groups, writing each
// segment into a table as the CUDA backend writes its pinned ring (cuda putSegs), so the walk
// is the one a replayed GPU step makes before its graph launches, less the cgo calls.
type shapeBackend struct {
	ring  []shapeSeg
	used  int
	keep  bool   // replays keep the last step's segment tables (SegmentKeeper) as CUDA's do
	merge bool   // adjacent sequences on one adapter share a segment (SegmentMerger)
	last  uint64 // the version the last step left
}

// StepSegments keeps the tables of the step before as the CUDA backend does (every step here
// replays one recording).
func (s *shapeBackend) StepSegments(version uint64) bool {
	kept := s.keep && version != 0 && version == s.last
	s.last = version
	return kept
}

func (s *shapeBackend) MergesSegments() bool { return s.merge }

// shapeSeg is lp_lora_seg's content (kernels/loraplex_kernels.h).
type shapeSeg struct {
	a, b                 uintptr
	start, n, rank, tOff int32
	scale                float32
}

func (s *shapeBackend) Name() string { return "shapes" }
func (s *shapeBackend) Upload(h model.HostTensor, rows, cols int) (model.Tensor, error) {
	return model.Tensor{Rows: rows, Cols: cols, DType: model.BF16}, nil
}
func (s *shapeBackend) Free(model.Tensor) {}
func (s *shapeBackend) Alloc(rows, cols int) model.Tensor {
	return model.Tensor{Rows: rows, Cols: cols, DType: model.F32}
}
func (s *shapeBackend) Write(model.Tensor, []float32) error                      { return nil }
func (s *shapeBackend) AllocKV(model.KVSpec) error                               { return nil }
func (s *shapeBackend) Prepare(*model.Step) error                                { return nil }
func (s *shapeBackend) Embed(out, table model.Tensor)                            {}
func (s *shapeBackend) MatMul(out, x, w model.Tensor)                            {}
func (s *shapeBackend) AddBias(x, bias model.Tensor)                             {}
func (s *shapeBackend) RMSNorm(out, x, w model.Tensor, eps float32)              {}
func (s *shapeBackend) AddRMSNorm(x, delta, out, w model.Tensor, e float32)      {}
func (s *shapeBackend) RoPE(x model.Tensor, heads int, table model.Tensor)       {}
func (s *shapeBackend) StoreKV(layer int, k, v model.Tensor)                     {}
func (s *shapeBackend) Attention(out, q model.Tensor, l int, p model.AttnParams) {}
func (s *shapeBackend) SiluMul(out, gate, up model.Tensor)                       {}
func (s *shapeBackend) LoRA(out, x model.Tensor, segs []model.LoRASeg)           { s.put(segs) }
func (s *shapeBackend) GatherRows(out, x model.Tensor)                           {}
func (s *shapeBackend) Read(t model.Tensor, dst []float32) error                 { return nil }
func (s *shapeBackend) BeginStep(key []byte) bool                                { s.used = 0; return key != nil }
func (s *shapeBackend) EndStep() error                                           { return nil }
func (s *shapeBackend) LoRAGroup(outs []model.Tensor, x model.Tensor, segs [][]model.LoRASeg) bool {
	for _, sg := range segs {
		s.put(sg)
	}
	return true
}

func (s *shapeBackend) put(segs []model.LoRASeg) {
	for len(s.ring) < s.used+len(segs) {
		s.ring = append(s.ring, shapeSeg{})
	}
	toff := int32(0)
	for i, sg := range segs {
		r := &s.ring[s.used+i]
		r.a, r.b = uintptr(sg.A.Off), uintptr(sg.B.Off)
		r.start, r.n, r.rank, r.tOff, r.scale = int32(sg.Start), int32(sg.N), int32(sg.A.Rows), toff, sg.Scale
		toff += int32(sg.N * sg.A.Rows)
	}
	s.used += len(segs)
}

var _ model.SegmentKeeper = (*shapeBackend)(nil)
var _ model.SegmentMerger = (*shapeBackend)(nil)
var _ model.LoRAGrouper = (*shapeBackend)(nil)

// BenchmarkStepHostWalk is the host's part of a replayed decode step of the Llama-3-8B shape:
// the step key, the segment lists of every layer and the forward pass's walk over the ops,
// with rows on distinct adapters of rank 16 on all seven projections (and on none), and with a
// backend that keeps the last step's segment tables (model.SegmentKeeper: a replay of the same
// sequences on the same adapters makes no op call, what is left is the step key), and one that
// merges the sequences on one adapter into one segment (model.SegmentMerger). On a GPU
// the device waits for all of it (the runner starts a step once the last one completed), so
// it adds to the step: bench/gpu prints the whole of it as measured there
// (cuda.Backend.ReplayHostTime), this the part that is the model's.
func BenchmarkStepHostWalk(b *testing.B) {
	cfg, err := model.ParseConfig([]byte(`{"architectures":["LlamaForCausalLM"],"vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":8192,"rope_theta":500000,"rms_norm_eps":1e-5,"tie_word_embeddings":false}`))
	if err != nil {
		b.Fatal(err)
	}
	be := &shapeBackend{}
	w := &model.Weights{Embed: be.Alloc(cfg.VocabSize, cfg.HiddenSize), Norm: be.Alloc(1, cfg.HiddenSize), LMHead: be.Alloc(cfg.VocabSize, cfg.HiddenSize)}
	w.Layers = make([]model.Layer, cfg.NumLayers)
	for l := range w.Layers {
		L := &w.Layers[l]
		L.AttnNorm, L.MLPNorm = be.Alloc(1, cfg.HiddenSize), be.Alloc(1, cfg.HiddenSize)
		for p := model.Proj(0); p < model.NumProj; p++ {
			out, in := cfg.ProjShape(p)
			L.W[p] = model.Tensor{Rows: out, Cols: in, DType: model.BF16}
		}
	}
	const rank = 16
	adapter := func(i int) *model.Adapter {
		a := &model.Adapter{Name: fmt.Sprint("a", i), Modules: make([][model.NumProj]*model.LoRAWeights, cfg.NumLayers), MaxRank: rank}
		for l := range a.Modules {
			for p := model.Proj(0); p < model.NumProj; p++ {
				out, in := cfg.ProjShape(p)
				a.Modules[l][p] = &model.LoRAWeights{A: model.Tensor{Rows: rank, Cols: in, DType: model.BF16, Off: i},
					B: model.Tensor{Rows: out, Cols: rank, DType: model.BF16, Off: i}, Rank: rank, Scale: 2}
			}
		}
		return a
	}
	for _, c := range []struct {
		batch, adapters int
		keep, merge     bool
	}{{1, 0, false, false}, {1, 1, false, false}, {64, 0, false, false}, {64, 1, false, false}, {64, 64, false, false},
		{1, 1, true, false}, {64, 64, true, false}, {64, 1, false, true}, {64, 64, false, true}} {
		name := fmt.Sprintf("batch%d_adapters%d", c.batch, c.adapters)
		if c.keep {
			name += "_kept" // consecutive steps of the same sequences: the replay skips the walk
		}
		if c.merge {
			name += "_merged" // one segment for the whole batch on one adapter; 64 adapters: none to merge
		}
		b.Run(name, func(b *testing.B) {
			be.keep, be.merge, be.last = c.keep, c.merge, 0
			r, err := model.NewRunner(cfg, be, w, model.RunnerOptions{MaxTokens: c.batch, MaxLogitRows: c.batch, MaxContext: 4096,
				KV: model.KVSpec{Pages: c.batch * 9, PageSize: 16}})
			if err != nil {
				b.Fatal(err)
			}
			s := &model.Step{}
			ads := make([]*model.Adapter, c.batch)
			var pool []*model.Adapter
			for i := 0; i < c.adapters; i++ {
				pool = append(pool, adapter(i))
			}
			for i := 0; i < c.batch; i++ {
				pages := make([]int32, 9)
				for j := range pages {
					pages[j] = int32(i*9 + j)
				}
				s.Tokens = append(s.Tokens, int32(i))
				s.Positions = append(s.Positions, 127)
				s.Slots = append(s.Slots, pages[7]*16+15)
				s.Seqs = append(s.Seqs, model.SeqRows{Start: i, N: 1, Len: 128, Pages: pages})
				s.LogitRows = append(s.LogitRows, int32(i))
				if c.adapters > 0 {
					ads[i] = pool[i%c.adapters]
				}
			}
			logits := make([]float32, c.batch*cfg.VocabSize)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := r.Forward(s, ads, logits); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
