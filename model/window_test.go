package model_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
)

// The runner slides each layer's window on its own: on the Qwen2 fixture's weights, a window in
// layer 1 only gives other logits than a window in both layers and than none, and a window
// declared for no layer changes nothing. (The transformers reference for a Qwen2 window is the
// long-context fixture qwen2_window.)
func TestRunnerSlidesEachLayersWindow(t *testing.T) {
	dir := fixture.Dir("qwen2")
	raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	b := cpu.New(1)
	defer b.Close()
	prompt := make([]int32, 40)
	for i := range prompt {
		prompt[i] = int32(3 + (i*37)%300)
	}
	logits := func(edit map[string]any) []float32 {
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		for k, v := range edit {
			m[k] = v
		}
		data, _ := json.Marshal(m)
		cfg, err := model.ParseConfig(data)
		if err != nil {
			t.Fatal(err)
		}
		w, err := model.LoadWeights(dir, cfg, b)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		r, err := model.NewRunner(cfg, b, w, model.RunnerOptions{MaxTokens: 64, MaxLogitRows: 1, MaxContext: 64, KV: model.KVSpec{Pages: 4, PageSize: 16}})
		if err != nil {
			t.Fatal(err)
		}
		s := model.Step{Tokens: prompt, Seqs: []model.SeqRows{{N: len(prompt), Len: len(prompt), Pages: []int32{2, 0, 3}}}, LogitRows: []int32{int32(len(prompt) - 1)}}
		for p := range prompt {
			s.Positions = append(s.Positions, int32(p))
			s.Slots = append(s.Slots, s.Seqs[0].Pages[p/16]*16+int32(p%16))
		}
		out := make([]float32, cfg.VocabSize)
		if err := r.Forward(&s, []*model.Adapter{nil}, out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	full := logits(nil)
	none := logits(map[string]any{"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 2})
	layer1 := logits(map[string]any{"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1})
	both := logits(map[string]any{"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 0})
	if !slices.Equal(none, full) {
		t.Error("a window on no layer changed the logits")
	}
	if slices.Equal(layer1, full) || slices.Equal(layer1, both) || slices.Equal(both, full) {
		t.Error("a window on layer 1 only is not between none and both")
	}
}
