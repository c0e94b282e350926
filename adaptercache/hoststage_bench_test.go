package adaptercache

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// BenchmarkHostStage is the host stage of a cold load on a backend that decodes q4 on the
// device (CUDA): LoadCompressedEncoded of the default (q4) lorapack file of a random rank-16
// Llama-3-8B-shaped adapter on all seven projections, page cache warm, then the returned
// closer closed, as the cache closes a host copy it drops. The machine this runs on is
// shared and noisy, so besides ns/op (a mean) it reports the median and the minimum of the
// loads and the CPU time a load costs on all threads (user + system): run it with -benchtime
// 200x and compare medians.
func BenchmarkHostStage(b *testing.B) {
	base, _, path := writeLlama8BLorapack(b)
	hashTree(b, path) // the page cache is warm
	onDevice := func(codec string) bool { return codec == "q4" || codec == "q8" }
	var took []float64
	cpu0 := cpuTime()
	for b.Loop() {
		t0 := time.Now()
		_, c, err := LoadCompressedEncoded(path, "x", base, onDevice)
		if err != nil {
			b.Fatal(err)
		}
		took = append(took, float64(time.Since(t0).Microseconds())/1e3)
		c.Close()
	}
	cpu := cpuTime() - cpu0
	slices.Sort(took)
	b.ReportMetric(took[len(took)/2], "median-ms")
	b.ReportMetric(took[0], "min-ms")
	b.ReportMetric(float64(cpu.Microseconds())/1e3/float64(len(took)), "cpu-ms/load")
}

// writeLlama8BLorapack writes a random rank-16 Llama-3-8B-shaped PEFT adapter (bf16, all seven
// projections, 32 layers) into a temp folder and that folder compressed with the default
// options next to it, and returns the base config, the folder and the lorapack file.
func writeLlama8BLorapack(b *testing.B) (*model.Config, string, string) {
	b.Helper()
	base, err := model.ParseConfig([]byte(llama3_8B))
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	r := rand.New(rand.NewPCG(2026, 11))
	var ts []safetensors.Tensor
	bf16 := func(n int, gen func() float64) []byte {
		out := make([]byte, 2*n)
		for i := range n {
			binary.LittleEndian.PutUint16(out[2*i:], model.F32ToBF16(float32(gen())))
		}
		return out
	}
	for l := range base.NumLayers {
		for p := model.Proj(0); p < model.NumProj; p++ {
			out, in := base.ProjShape(p)
			mod := fmt.Sprintf("%smodel.layers.%d.%s.%s", prefix, l, p.Block(), p)
			bound := 1 / math.Sqrt(float64(in))
			ts = append(ts,
				safetensors.Tensor{Name: mod + ".lora_A.weight", DType: "BF16", Shape: []int{16, in}, Data: bf16(16*in, func() float64 { return (2*r.Float64() - 1) * bound })},
				safetensors.Tensor{Name: mod + ".lora_B.weight", DType: "BF16", Shape: []int{out, 16}, Data: bf16(out*16, func() float64 { return r.NormFloat64() * 0.01 })})
		}
	}
	if err := safetensors.WriteFile(filepath.Join(dir, PEFTWeightsFile), ts, map[string]string{"format": "pt"}); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, PEFTConfigFile), []byte(`{"peft_type":"LORA","r":16,"lora_alpha":32,"bias":"none",
		"target_modules":["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]}`), 0o644); err != nil {
		b.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := CompressPEFT(dir, &buf, DefaultCompressOptions()); err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "a.lorapack")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		b.Fatal(err)
	}
	return base, dir, path
}
