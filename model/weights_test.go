package model_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// TestLoadWeightsErrors edits a copy of a real fixture checkpoint and checks each defect is
// reported with the file and the tensor.
func TestLoadWeightsErrors(t *testing.T) {
	src := fixtureDir("qwen3")
	cfg, err := model.LoadConfig(src)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := safetensors.Open(filepath.Join(src, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	var tensors []safetensors.Tensor
	for _, n := range orig.Names() {
		tt, _ := orig.Tensor(n)
		tensors = append(tensors, tt)
	}
	edit := func(f func([]safetensors.Tensor) []safetensors.Tensor) string {
		dir := t.TempDir()
		ts := f(append([]safetensors.Tensor(nil), tensors...))
		if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), ts, nil); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	without := func(name string) func([]safetensors.Tensor) []safetensors.Tensor {
		return func(ts []safetensors.Tensor) []safetensors.Tensor {
			out := ts[:0]
			for _, x := range ts {
				if x.Name != name {
					out = append(out, x)
				}
			}
			return out
		}
	}
	for _, tc := range []struct {
		name string
		dir  string
		want []string
	}{
		{"missing", edit(without("model.layers.1.self_attn.k_norm.weight")), []string{"missing", "model.layers.1.self_attn.k_norm.weight"}},
		{"extra", edit(func(ts []safetensors.Tensor) []safetensors.Tensor {
			return append(ts, safetensors.Tensor{Name: "model.layers.0.mystery.weight", DType: "F32", Shape: []int{1}, Data: make([]byte, 4)})
		}), []string{"unexpected", "model.layers.0.mystery.weight", "model.safetensors"}},
		{"shape", edit(func(ts []safetensors.Tensor) []safetensors.Tensor {
			for i, x := range ts {
				if x.Name == "model.norm.weight" {
					ts[i] = safetensors.Tensor{Name: x.Name, DType: "F32", Shape: []int{32}, Data: make([]byte, 128)}
				}
			}
			return ts
		}), []string{"model.norm.weight", "shape [32]", "want [64]", "model.safetensors"}},
		{"dtype", edit(func(ts []safetensors.Tensor) []safetensors.Tensor {
			for i, x := range ts {
				if x.Name == "model.norm.weight" {
					ts[i] = safetensors.Tensor{Name: x.Name, DType: "I32", Shape: []int{64}, Data: make([]byte, 256)}
				}
			}
			return ts
		}), []string{"model.norm.weight", "I32"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := cpu.New(1)
			defer b.Close()
			_, err := model.LoadWeights(tc.dir, cfg, b)
			if err == nil {
				t.Fatal("loaded a broken checkpoint")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	t.Run("truncated", func(t *testing.T) {
		dir := t.TempDir()
		data, err := os.ReadFile(filepath.Join(src, "model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "model.safetensors"), data[:len(data)-100], 0o644); err != nil {
			t.Fatal(err)
		}
		b := cpu.New(1)
		defer b.Close()
		if _, err := model.LoadWeights(dir, cfg, b); err == nil || !strings.Contains(err.Error(), "model.safetensors") {
			t.Fatalf("truncated file: %v", err)
		}
	})
}
