package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/toolcall"
)

// config is everything the command line sets.
type config struct {
	modelDir, tokenizerDir string
	adapters               []adapterSpec
	routers                []adapterSpec // NAME=DIR router bundles
	adapterDirs            []string
	adapterRoots           []string
	device                 string
	httpAddr, grpcAddr     string
	servedName             string
	maxNumSeqs             int
	maxBatchedTokens       int
	longPrefillThreshold   int
	maxModelLen            int
	kvCacheTokens          int
	kvCacheMemory          int64   // bytes; 0: from the device's memory (kvmemory.go)
	gpuMemoryUtilization   float64 // share of a GPU's memory the engine may use
	maxQueued              int
	maxLoRAs, maxCPULoRAs  int
	maxLoRARank            int
	threads                int
	noMmap                 bool
	apiKey                 string
	allowRuntimeAdapters   bool
	prefixCaching          bool
	deterministic          bool
	kvEvents               *serve.KVEventsConfig // nil: off
	logLevel               slog.Level
	shutdownTimeout        time.Duration
	loadTimeout            time.Duration
	allowedOrigins         []string
	allowedHosts           []string
	toolCallParser         *toolcall.Format // nil: the one the chat template teaches
}

type adapterSpec struct{ name, path string }

// roots are the folders and files that adapter and router files may resolve inside
// (serve.Options.AdapterRoots; the engine adds the --adapter-dir folders): the --adapter-root
// folders, and each --adapter and --router path given on the command line, which the operator
// named and so trusts, together with what its links reach inside it. A link out of all of them
// (say into a Hugging Face cache) needs that folder as an --adapter-root.
func (c *config) roots() []string {
	roots := append([]string(nil), c.adapterRoots...)
	for _, a := range c.adapters {
		roots = append(roots, a.path)
	}
	for _, r := range c.routers {
		roots = append(roots, r.path)
	}
	return roots
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func parseFlags(args []string, out io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(out)
	setUsage(fs)
	fs.StringVar(&c.modelDir, "model", "", "Hugging Face model folder (config.json, *.safetensors, tokenizer.json); empty: the built-in trained demo (model, four adapters, router)")
	fs.StringVar(&c.tokenizerDir, "tokenizer", "", "folder with tokenizer.json and tokenizer_config.json (default: the model folder)")
	fs.Func("adapter", "LoRA adapter to serve, as NAME=PATH (PEFT folder); repeatable", func(s string) error {
		name, path, ok := strings.Cut(s, "=")
		if !ok || name == "" || path == "" {
			return fmt.Errorf("want NAME=PATH, got %q", s)
		}
		c.adapters = append(c.adapters, adapterSpec{name, path})
		return nil
	})
	fs.Func("router", "router (mixture of LoRA experts) to serve, as NAME=DIR (a loraplex.router/v1 bundle whose experts are served adapters); repeatable", func(s string) error {
		name, dir, ok := strings.Cut(s, "=")
		if !ok || name == "" || dir == "" {
			return fmt.Errorf("want NAME=DIR, got %q", s)
		}
		c.routers = append(c.routers, adapterSpec{name, dir})
		return nil
	})
	fs.Func("adapter-dir", "folder of adapters loaded by name on first use: a PEFT folder DIR/NAME, or a lorapack file DIR/NAME or DIR/NAME.lorapack; repeatable", func(s string) error {
		c.adapterDirs = append(c.adapterDirs, s)
		return nil
	})
	fs.Func("adapter-root", "folder that adapter and router files may resolve inside, for the runtime load API (the --adapter-dir folders and the --adapter and --router paths are roots too); repeatable", func(s string) error {
		c.adapterRoots = append(c.adapterRoots, s)
		return nil
	})
	fs.StringVar(&c.device, "device", "auto", "auto, cpu or cuda[:N]")
	fs.StringVar(&c.httpAddr, "http-addr", "127.0.0.1:8000", "address of the HTTP API")
	fs.StringVar(&c.grpcAddr, "grpc-addr", "", "address of the gRPC API (loraplex.v1, health, reflection); empty: off")
	fs.Func("tool-call-parser", "how the model writes tool calls, by vLLM's names: "+strings.Join(toolcall.Names(), ", ")+
		" (default: the format the chat template teaches, when it teaches exactly one; without one, chat requests that want tool calls are refused)", func(s string) error {
		f, err := toolcall.Lookup(s)
		c.toolCallParser = f
		return err
	})
	fs.StringVar(&c.servedName, "served-model-name", "", "the base model's name in the API (default: the --model argument exactly as given, as in vLLM)")
	fs.IntVar(&c.maxNumSeqs, "max-num-seqs", 0, "sequences in one batch (0: engine default)")
	fs.IntVar(&c.maxBatchedTokens, "max-num-batched-tokens", 0, "token rows in one forward pass (0: engine default)")
	fs.IntVar(&c.longPrefillThreshold, "long-prefill-token-threshold", 0, "a prefill with more rows left than this takes at most this many rows of a step while requests wait, so they start at the next step (0: a quarter of --max-num-batched-tokens; --max-num-batched-tokens: off)")
	fs.IntVar(&c.maxModelLen, "max-model-len", 0, "prompt + output limit in tokens (0: the model's max_position_embeddings, stretched by linear or yarn RoPE scaling; more is refused); a prompt text longer than this times the tokenizer's longest token in bytes is refused before tokenizing")
	fs.IntVar(&c.kvCacheTokens, "kv-cache-tokens", 0, "KV-cache capacity in tokens, overriding the sizing from memory (0: from --kv-cache-memory or the device's memory)")
	fs.Func("kv-cache-memory", "KV-cache budget in bytes, e.g. 4GiB, 512MiB, 8G (default: on a GPU what --gpu-memory-utilization leaves; on the CPU a quarter of MemAvailable, at most max-num-seqs x max-model-len tokens)", func(s string) error {
		n, err := parseBytes(s)
		if err != nil {
			return err
		}
		if n <= 0 {
			return fmt.Errorf("%q: must be positive", s)
		}
		c.kvCacheMemory = n
		return nil
	})
	fs.Float64Var(&c.gpuMemoryUtilization, "gpu-memory-utilization", 0.9, "share of the GPU's total memory the server may use: weights, workspaces and adapter slots first, the KV cache gets the rest (ignored on the CPU)")
	fs.IntVar(&c.maxLoRAs, "max-loras", 0, "adapters on the device at once (0: 32); others wait while one loads into a free or least recently used slot")
	fs.IntVar(&c.maxLoRARank, "max-lora-rank", 0, "adapters with a higher LoRA rank are refused at load (0: 256, the largest the CUDA kernels implement)")
	fs.IntVar(&c.maxCPULoRAs, "max-cpu-loras", 0, "adapters kept in host memory (0: no limit)")
	fs.IntVar(&c.maxQueued, "max-queued-requests", 0, "waiting requests beyond which the server answers 429 with Retry-After (0: engine default 1024); a request needing more generations (prompts x n) than this is a 400")
	fs.IntVar(&c.threads, "threads", 0, "CPU backend threads (0: GOMAXPROCS)")
	fs.BoolVar(&c.noMmap, "no-mmap", false, "CPU backend: copy the model's matrices out of the file mapping into huge pages at start-up (more memory, faster batch-1 decode), as llama.cpp's --no-mmap")
	fs.StringVar(&c.apiKey, "api-key", "", "require this bearer token on the API (not on /health and /metrics, which stay open for probes and Prometheus: restrict them at the network)")
	fs.BoolVar(&c.allowRuntimeAdapters, "allow-runtime-adapter-updates", false, "enable /v1/load_lora_adapter, /v1/unload_lora_adapter, /v1/load_router and /v1/unload_router (and the gRPC equivalents)")
	fs.Func("allowed-origins", "without --api-key, browser origins (scheme://host[:port]) allowed to call the API, comma-separated or repeated; * allows any (default: none)", func(s string) error {
		c.allowedOrigins = append(c.allowedOrigins, splitList(s)...)
		return nil
	})
	fs.Func("allowed-hosts", "without --api-key, host names the API answers to besides IP addresses, localhost and the --http-addr host, comma-separated or repeated; * allows any (refusing other names defeats DNS rebinding)", func(s string) error {
		c.allowedHosts = append(c.allowedHosts, splitList(s)...)
		return nil
	})
	// vLLM's pair: --enable-prefix-caching (the default) and --no-enable-prefix-caching; the
	// last one given wins.
	fs.BoolVar(&c.prefixCaching, "enable-prefix-caching", true, "reuse the KV cache of prompt prefixes computed before by the same model, adapter or router (by content)")
	fs.BoolFunc("no-enable-prefix-caching", "turn prefix caching off: compute every prompt in full", func(string) error {
		c.prefixCaching = false
		return nil
	})
	fs.BoolVar(&c.deterministic, "deterministic", false, "batch-invariant mode (vLLM's VLLM_BATCH_INVARIANT): a request's tokens and logprobs are bitwise the same alone or in any batch, at a cost in GPU throughput")
	fs.Func("kv-events-config", `vLLM's KV-cache events for llm-d's precise prefix-cache scorer, as JSON: {"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557", "topic": "kv@POD@MODEL"} (default: off; block hashes are seeded from PYTHONHASHSEED, as llm-d's hashSeed)`, func(s string) error {
		kc, err := serve.ParseKVEventsConfig(s)
		if err != nil {
			return err
		}
		c.kvEvents = kc
		return nil
	})
	level := fs.String("log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long running requests may finish after SIGINT/SIGTERM")
	fs.DurationVar(&c.loadTimeout, "load-timeout", serve.DefaultLoadTimeout, "how long one adapter or router load (from disk onto the device) may take")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := c.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)
	}
	for _, v := range []struct {
		name string
		n    int
	}{{"max-num-seqs", c.maxNumSeqs}, {"max-num-batched-tokens", c.maxBatchedTokens}, {"long-prefill-token-threshold", c.longPrefillThreshold}, {"max-model-len", c.maxModelLen},
		{"kv-cache-tokens", c.kvCacheTokens}, {"max-queued-requests", c.maxQueued}, {"threads", c.threads},
		{"max-loras", c.maxLoRAs}, {"max-cpu-loras", c.maxCPULoRAs}, {"max-lora-rank", c.maxLoRARank}} {
		if v.n < 0 {
			return nil, fmt.Errorf("--%s must not be negative, got %d", v.name, v.n)
		}
	}
	if !(c.gpuMemoryUtilization > 0 && c.gpuMemoryUtilization <= 1) {
		return nil, fmt.Errorf("--gpu-memory-utilization must be in (0, 1], got %v", c.gpuMemoryUtilization)
	}
	if c.shutdownTimeout < 0 {
		return nil, fmt.Errorf("--shutdown-timeout must not be negative")
	}
	if c.loadTimeout <= 0 {
		return nil, fmt.Errorf("--load-timeout must be positive")
	}
	return c, nil
}
