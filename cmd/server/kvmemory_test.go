package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// longModel copies the tiny Llama fixture into a temporary folder with config.json edited by
// edit (the weights do not depend on the context length: RoPE is computed from the config).
func longModel(t *testing.T, edit func(cfg map[string]any)) string {
	t.Helper()
	src := filepath.Join("..", "..", "testdata", "models", "llama")
	dir := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() || e.Name() == "config.json" {
			continue
		}
		// Links keep the test from copying the weights; the loader reads through them.
		abs, _ := filepath.Abs(filepath.Join(src, e.Name()))
		if err := os.Symlink(abs, filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	edit(cfg)
	out, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), out, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func positions(n int) func(map[string]any) {
	return func(cfg map[string]any) { cfg["max_position_embeddings"] = n }
}

// With no --max-model-len the server takes the model's whole context (max_position_embeddings,
// 8192 here: no 4096 cap), says so in its startup log, and serves a prompt longer than 4,096
// tokens.
func TestMaxModelLenDefaultsToTheModels(t *testing.T) {
	dir := longModel(t, positions(8192))
	url, logs, stop := start(t, "--model", dir, "--served-model-name", "tiny", "--device", "cpu", "--max-num-seqs", "2")
	defer stop()
	for _, want := range []string{"max_model_len=8192", `max_model_len_from="model config"`, "kv_cache_tokens=", "kv_cache_bytes=", "kv_cache_from=\"0.25 of MemAvailable"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("startup log lacks %q:\n%s", want, logs)
		}
	}
	var cards struct {
		Data []struct {
			MaxModelLen int `json:"max_model_len"`
		} `json:"data"`
	}
	if st := getJSON(t, url+"/v1/models", &cards); st != 200 || len(cards.Data) == 0 || cards.Data[0].MaxModelLen != 8192 {
		t.Errorf("/v1/models %d %+v, want max_model_len 8192", st, cards)
	}
	prompt := make([]int64, 5000)
	for i := range prompt {
		prompt[i] = int64(3 + i%300)
	}
	client := oai.NewClient(option.WithBaseURL(url+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	resp, err := client.Completions.New(context.Background(), oai.CompletionNewParams{
		Model: "tiny", Prompt: oai.CompletionNewParamsPromptUnion{OfArrayOfTokens: prompt},
		MaxTokens: oai.Int(4), Temperature: oai.Float(0),
	}, option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatalf("a 5000-token prompt on an 8192-position model: %v", err)
	}
	if resp.Usage.PromptTokens != 5000 || resp.Usage.CompletionTokens != 4 {
		t.Errorf("usage %+v, want 5000 prompt and 4 completion tokens", resp.Usage)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// A --max-model-len above what the model supports is refused at startup, naming the flag and
// the model's length, as vLLM does; RoPE scaling that stretches the trained context (yarn:
// original_max_position_embeddings x factor) raises what is allowed.
func TestMaxModelLenAboveTheModelsIsRefused(t *testing.T) {
	plain := longModel(t, positions(8192))
	err := run(context.Background(), []string{"--model", plain, "--device", "cpu", "--http-addr", "127.0.0.1:0", "--max-model-len", "8193"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--max-model-len") || !strings.Contains(err.Error(), "8192") || !strings.Contains(err.Error(), "max_position_embeddings") {
		t.Errorf("--max-model-len 8193 on an 8192-position model: %v, want a refusal naming the flag and 8192", err)
	}
	yarn := longModel(t, func(cfg map[string]any) {
		cfg["max_position_embeddings"] = 2048
		cfg["rope_parameters"] = map[string]any{"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 2048}
	})
	err = run(context.Background(), []string{"--model", yarn, "--device", "cpu", "--http-addr", "127.0.0.1:0", "--max-model-len", "8193"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "original_max_position_embeddings 2048 x yarn rope factor 4") {
		t.Errorf("--max-model-len 8193 on a yarn x4 of 2048 model: %v, want a refusal naming the yarn length", err)
	}
	_, logs, stop := start(t, "--model", yarn, "--device", "cpu", "--max-num-seqs", "1")
	defer stop()
	if !strings.Contains(logs.String(), "max_model_len=8192") {
		t.Errorf("yarn x4 of 2048: startup log lacks max_model_len=8192:\n%s", logs)
	}
}

// --kv-cache-memory sizes the KV cache in whole pages from bytes (the tiny model keeps 512
// bytes a token on the CPU: 2 layers x 2 KV heads x 16 dims x K and V x 4 bytes); a budget
// that cannot hold one sequence of max-model-len fails startup naming both flags.
func TestKVCacheMemorySizesTheCache(t *testing.T) {
	dir := longModel(t, positions(8192))
	_, logs, stop := start(t, "--model", dir, "--device", "cpu", "--kv-cache-memory", "4MiB")
	defer stop()
	for _, want := range []string{"kv_cache_tokens=8192", "kv_cache_bytes=4194304", "kv_cache_from=--kv-cache-memory"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("startup log lacks %q:\n%s", want, logs)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), []string{"--model", dir, "--device", "cpu", "--http-addr", "127.0.0.1:0", "--kv-cache-memory", "1MiB"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "lower --max-model-len (now 8192) or raise --kv-cache-memory") {
		t.Errorf("1MiB for an 8192-token sequence: %v, want a refusal naming --max-model-len and --kv-cache-memory", err)
	}
	err = run(context.Background(), []string{"--model", dir, "--device", "cpu", "--http-addr", "127.0.0.1:0", "--kv-cache-tokens", "100", "--max-model-len", "200"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "raise --kv-cache-tokens") {
		t.Errorf("--kv-cache-tokens 100 for 200-token sequences: %v, want a refusal naming --kv-cache-tokens", err)
	}
	for _, bad := range []string{"4XB", "-1GiB", "", "GiB", "1e9"} {
		if _, err := parseFlags([]string{"--kv-cache-memory", bad}, io.Discard); err == nil {
			t.Errorf("--kv-cache-memory %q accepted", bad)
		}
	}
	for _, bad := range []string{"0", "1.5", "-0.1", "NaN"} {
		if _, err := parseFlags([]string{"--gpu-memory-utilization", bad}, io.Discard); err == nil {
			t.Errorf("--gpu-memory-utilization %q accepted", bad)
		}
	}
}

// Sizes parse as vLLM's: decimal suffixes are powers of 1000, binary ones of 1024.
func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"1073741824": 1 << 30, "4GiB": 4 << 30, "512MiB": 512 << 20, "8G": 8e9, "1.5Gi": 3 << 29, "16k": 16000, "2 TiB": 2 << 40, "64KiB": 64 << 10} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "1..2G", "4 gigs", "-4G", "1e3", "99999999999TiB", "Inf"} {
		if got, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) = %d, want an error", in, got)
		}
	}
}

// parseBytes never panics and never returns a negative size.
func FuzzParseBytes(f *testing.F) {
	for _, s := range []string{"4GiB", "1.5G", "0", "", "9223372036854775807", "1e9", ".", "12 KiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := parseBytes(s); err == nil && n < 0 {
			t.Errorf("parseBytes(%q) = %d", s, n)
		}
	})
}

// MemAvailable is read in kB and returned in bytes; a /proc/meminfo without it is an error.
func TestParseMemAvailable(t *testing.T) {
	got, err := parseMemAvailable([]byte("MemTotal:       65842340 kB\nMemFree:         1234 kB\nMemAvailable:   40000000 kB\n"))
	if err != nil || got != 40000000*1024 {
		t.Errorf("got %d, %v", got, err)
	}
	for _, bad := range []string{"MemTotal: 1 kB\n", "MemAvailable: 12 MB\n", "MemAvailable: x kB\n", "MemAvailable: 99999999999999999 kB\n"} {
		if _, err := parseMemAvailable([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := memAvailable(); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("this host's /proc/meminfo: %v", err)
	}
}

// parseMemAvailable never panics and never returns a negative size.
func FuzzParseMemAvailable(f *testing.F) {
	f.Add([]byte("MemAvailable:   40000000 kB\n"))
	f.Add([]byte("MemAvailable: -1 kB\n"))
	f.Add([]byte("MemAvailable:\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if n, err := parseMemAvailable(data); err == nil && n < 0 {
			t.Errorf("parseMemAvailable(%q) = %d", data, n)
		}
	})
}

// On a GPU the KV cache gets --gpu-memory-utilization of the total, less what is in use after
// loading and what the engine still allocates (vLLM's rule); on the host, a share of
// MemAvailable capped at what every sequence at full length can use.
func TestKVBudgetArithmetic(t *testing.T) {
	const gib = 1 << 30
	// 80 GiB card, 60 free after loading (20 in use): 72 - 20 - 2 reserved = 50 GiB.
	if got := gpuKVBudget(80*gib, 60*gib, 0.9, 2*gib); got != 50*gib {
		t.Errorf("gpu budget %d, want %d", got, 50*gib)
	}
	// Another process took most of the card: nothing is left, and the budget says so.
	if got := gpuKVBudget(80*gib, 5*gib, 0.9, gib); got >= 0 {
		t.Errorf("gpu budget with 75 GiB in use: %d, want negative", got)
	}
	if got := cpuKVBudget(16*gib, 0.25, 100*gib); got != 4*gib {
		t.Errorf("cpu budget %d, want 4 GiB", got)
	}
	if got := cpuKVBudget(16*gib, 0.25, gib); got != gib {
		t.Errorf("cpu budget capped %d, want 1 GiB", got)
	}
}
