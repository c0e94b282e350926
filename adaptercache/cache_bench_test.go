package adaptercache

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// BenchmarkCacheColdLoad measures one adapter from disk to ready on the CPU device (Register,
// Acquire, Release, Unregister per iteration, so every Acquire reads the folder again) with the
// page cache warm. ms/load is the whole round; load-ms and upload-ms split it into disk -> host
// (LoadPEFT: config, header, validation, mmap) and host -> device (UploadAdapter). The CPU
// backend aliases F32 and BF16 tensors in the mapping, so no tensor byte is read here: the
// first forward pass faults the pages in. A lorapack load decodes into fresh memory and takes
// long enough that the default benchtime gives one iteration: run it with -benchtime 20x.
// The q4 file on a decoding device is the path CUDA takes (LoadCompressedEncoded, the streams
// hashed as they are read), on the CPU backend decoding the streams in Upload: its load-ms and
// digest-ms are the GPU's stage, its upload-ms is not. digest-ms is the part of load-ms spent in
// Digest after the loader returned; cpu-ms/load counts every thread (user + system).
func BenchmarkCacheColdLoad(b *testing.B) {
	for _, n := range fixtureNames {
		b.Run("fixture/"+n, func(b *testing.B) { benchColdLoad(b, llamaConfig(b), fixturePath(n), nil) })
	}
	cfg, err := model.ParseConfig([]byte(llama3_8B))
	if err != nil {
		b.Fatal(err)
	}
	for _, dt := range []string{"F32", "BF16"} {
		b.Run("llama3-8b-r16-all-linear-"+dt, func(b *testing.B) {
			dir := writeLlamaAdapter(b, cfg, 16, dt)
			benchColdLoad(b, cfg, dir, nil)
		})
	}
	// The same F32 adapter as a lorapack file (default options): decoding replaces the mmap.
	packed := func(b *testing.B) string {
		dir := writeLlamaAdapter(b, cfg, 16, "F32")
		p := filepath.Join(b.TempDir(), "adapter.lorapack")
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := CompressPEFT(dir, f, DefaultCompressOptions()); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		return p
	}
	b.Run("llama3-8b-r16-all-linear-lorapack", func(b *testing.B) { benchColdLoad(b, cfg, packed(b), nil) })
	b.Run("llama3-8b-r16-all-linear-lorapack-on-a-q4-decoding-device", func(b *testing.B) {
		benchColdLoad(b, cfg, packed(b), func(be model.Backend) model.Backend {
			return &decodingBackend{countingBackend: &countingBackend{Backend: be}}
		})
	})
}

// benchColdLoad times Register + Acquire of dir on the CPU backend, wrapped by wrap if not nil.
func benchColdLoad(b *testing.B, cfg *model.Config, dir string, wrap func(model.Backend) model.Backend) {
	cb := cpu.New(1)
	defer cb.Close()
	var be model.Backend = cb
	if wrap != nil {
		be = wrap(cb)
	}
	c, err := New(Options{Config: cfg, Backend: be, MaxDeviceSlots: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	hashTree(b, dir) // reads every byte: the page cache is warm
	var bytes int64
	cpu0 := cpuTime()
	b.ResetTimer()
	for b.Loop() {
		if err := c.Register("x", dir); err != nil {
			b.Fatal(err)
		}
		l, err := c.Acquire(context.Background(), "x")
		if err != nil {
			b.Fatal(err)
		}
		bytes = l.Adapter().Bytes
		l.Release()
		c.Unregister("x")
	}
	s := c.Stats()
	n := float64(b.N)
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/n, "ms/load")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1e3/n, "cpu-ms/load")
	b.ReportMetric(s.LoadSeconds*1e3/float64(s.Loads), "load-ms")
	b.ReportMetric(s.DigestSeconds*1e3/float64(s.Loads), "digest-ms")
	b.ReportMetric(s.UploadSeconds*1e3/float64(s.Uploads), "upload-ms")
	b.ReportMetric(float64(bytes)/(1<<20), "MiB")
	b.ReportMetric(0, "ns/op")
}

// cpuTime is the process's CPU time, every thread, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// llama3_8B is Meta-Llama-3-8B's config.json, the fields loraplex reads.
const llama3_8B = `{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
	"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
	"num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192,
	"rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu", "torch_dtype": "bfloat16"}`

// writeLlamaAdapter writes a PEFT adapter of the given rank on every linear of every layer, as
// peft saves it (F32 by default: peft keeps adapter weights in float32), into a temp folder.
func writeLlamaAdapter(b *testing.B, cfg *model.Config, rank int, dtype string) string {
	dir := b.TempDir()
	conf := baseCfg()
	conf["r"], conf["lora_alpha"] = rank, 2*rank
	conf["target_modules"] = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
	raw, _ := json.Marshal(conf)
	if err := os.WriteFile(filepath.Join(dir, PEFTConfigFile), raw, 0o644); err != nil {
		b.Fatal(err)
	}
	size := 4
	if dtype == "BF16" {
		size = 2
	}
	fill := func(name string, rows, cols int) safetensors.Tensor {
		data := make([]byte, rows*cols*size)
		for i := range rows * cols {
			v := math.Float32bits(float32(i%13-6) * 1e-3)
			if size == 4 {
				binary.LittleEndian.PutUint32(data[4*i:], v)
			} else {
				binary.LittleEndian.PutUint16(data[2*i:], uint16(v>>16))
			}
		}
		return safetensors.Tensor{Name: name, DType: dtype, Shape: []int{rows, cols}, Data: data}
	}
	var ts []safetensors.Tensor
	for l := range cfg.NumLayers {
		for p := model.Proj(0); p < model.NumProj; p++ {
			out, in := cfg.ProjShape(p)
			mod := fmt.Sprintf("%smodel.layers.%d.%s.%s", prefix, l, p.Block(), p)
			ts = append(ts, fill(mod+".lora_A.weight", rank, in), fill(mod+".lora_B.weight", out, rank))
		}
	}
	if err := safetensors.WriteFile(filepath.Join(dir, PEFTWeightsFile), ts, map[string]string{"format": "pt"}); err != nil {
		b.Fatal(err)
	}
	return dir
}
