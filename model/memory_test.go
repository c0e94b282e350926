package model_test

import (
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
)

// allocCounter is the CPU backend with its activation allocations summed.
type allocCounter struct {
	*cpu.Backend
	bytes int64
}

func (a *allocCounter) Alloc(rows, cols int) model.Tensor {
	a.bytes += 4 * int64(rows) * int64(cols)
	return a.Backend.Alloc(rows, cols)
}

// WorkspaceBytes is exactly what NewRunner allocates besides the KV cache, so a server can
// reserve device memory for it before it sizes the cache.
func TestWorkspaceBytesIsWhatNewRunnerAllocates(t *testing.T) {
	for _, name := range fixture.Models {
		cfg, err := model.LoadConfig(fixture.Dir(name))
		if err != nil {
			t.Fatal(err)
		}
		b := &allocCounter{Backend: cpu.New(1)}
		opt := model.RunnerOptions{MaxTokens: 37, MaxLogitRows: 5, MaxContext: 300, KV: model.KVSpec{Pages: 4, PageSize: 16}}
		if _, err := model.NewRunner(cfg, b, nil, opt); err != nil {
			t.Fatal(err)
		}
		b.Close()
		if got := cfg.WorkspaceBytes(opt); got != b.bytes {
			t.Errorf("%s: WorkspaceBytes %d, NewRunner allocated %d", name, got, b.bytes)
		}
	}
}

// A token's KV footprint is K and V of every layer's KV heads; the CPU keeps float32.
func TestKVBytesPerToken(t *testing.T) {
	cfg, err := model.LoadConfig(fixture.Dir("llama"))
	if err != nil {
		t.Fatal(err)
	}
	b := cpu.New(1)
	defer b.Close()
	// 2 layers x 2 KV heads x 16 dims x (K, V) x 4 bytes.
	if got := cfg.KVBytesPerToken(model.KVElementBytes(b)); got != 512 {
		t.Errorf("KVBytesPerToken = %d, want 512", got)
	}
	// One adapter of rank 8 on all seven projections: (q 64+64, k 32+64, v 32+64, o 64+64,
	// gate 96+64, up 96+64, down 64+96) x 2 layers x 8 x 2 bytes.
	if got, want := cfg.AdapterBytes(8, 2), int64((128+96+96+128+160+160+160)*2*8*2); got != want {
		t.Errorf("AdapterBytes = %d, want %d", got, want)
	}
}

// The longest context a model supports follows vLLM: max_position_embeddings, stretched by
// linear and yarn scaling of a shorter trained context; llama3 configs state the extended length.
func TestDerivedMaxLen(t *testing.T) {
	for _, c := range []struct {
		json string
		want int
	}{
		{`{"max_position_embeddings": 8192}`, 8192},
		{`{"max_position_embeddings": 4096, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}`, 8192},
		{`{"max_position_embeddings": 4096, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}}`, 8192},
		{`{"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}`, 131072},
		{`{}`, 0},
	} {
		base := `{"architectures": ["LlamaForCausalLM"], "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2`
		cfg, err := model.ParseConfig([]byte(base + "," + c.json[1:]))
		if c.json == `{}` {
			cfg, err = model.ParseConfig([]byte(base + "}"))
		}
		if err != nil {
			t.Fatalf("%s: %v", c.json, err)
		}
		if got := cfg.DerivedMaxLen(); got != c.want {
			t.Errorf("%s: DerivedMaxLen %d, want %d", c.json, got, c.want)
		}
	}
}
