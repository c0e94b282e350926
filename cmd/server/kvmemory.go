package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/serve"
)

// cpuKVShare is the share of the host's available memory (MemAvailable, read once the weights
// are mapped) that the CPU backend's KV cache takes by default. A quarter leaves the rest to the
// page cache that holds the mapped weights, to adapters in host memory and to whatever else runs
// on the host; --kv-cache-memory sets the budget outright.
const cpuKVShare = 0.25

// kvPlan is the KV cache's size as the server decided it, before the engine is built: a
// capacity in tokens (--kv-cache-tokens) or a budget in bytes, and where it came from.
type kvPlan struct {
	tokens int
	bytes  int64
	source string // for the startup log and the error when one sequence does not fit
	raise  string // the flag that makes the cache larger
}

// planKVCache sizes the KV cache as vLLM does. --kv-cache-tokens and --kv-cache-memory are
// taken as given. On a GPU (model.MemoryReporter) the cache gets --gpu-memory-utilization of the
// device's total memory minus what is in use once the weights are loaded (the CUDA context, the
// weights, other processes) and minus what the engine will still allocate: the runner's
// workspaces and --max-loras adapter slots at --max-lora-rank when given, else at
// reservedLoRARank. On the host it gets cpuKVShare of
// MemAvailable, but no more than every sequence at full length can use (max-num-seqs x
// max-model-len): a larger cache would only keep more prefixes, and the host's RAM is shared.
func planKVCache(c *config, cfg *model.Config, b model.Backend, maxModelLen int) (kvPlan, error) {
	switch {
	case c.kvCacheTokens > 0:
		return kvPlan{tokens: c.kvCacheTokens, source: "--kv-cache-tokens", raise: "--kv-cache-tokens"}, nil
	case c.kvCacheMemory > 0:
		return kvPlan{bytes: c.kvCacheMemory, source: "--kv-cache-memory", raise: "--kv-cache-memory"}, nil
	}
	elem := model.KVElementBytes(b)
	if mr, ok := b.(model.MemoryReporter); ok {
		free, total, err := mr.MemInfo()
		if err != nil {
			return kvPlan{}, fmt.Errorf("sizing the KV cache from device memory: %w (set --kv-cache-memory or --kv-cache-tokens)", err)
		}
		// --max-lora-rank's default (256) is a ceiling for refusing adapters, not the rank
		// people serve: reserving 32 slots at 256 would take ~43 GB of an 8B model's GPU. So
		// the slots are reserved at reservedLoRARank unless the flag is given; adapters of a
		// higher rank still load into the headroom --gpu-memory-utilization leaves, and an
		// upload that finds no memory fails that adapter alone.
		rank := reservedLoRARank
		if c.maxLoRARank > 0 {
			rank = c.maxLoRARank
		}
		loras := c.maxLoRAs
		if loras <= 0 {
			loras = serve.DefaultMaxLoRAs
		}
		work := cfg.WorkspaceBytes(serve.RunnerOptions(serve.Options{MaxNumSeqs: c.maxNumSeqs, MaxBatchedTokens: c.maxBatchedTokens, MaxModelLen: maxModelLen}))
		slots := int64(loras) * cfg.AdapterBytes(rank, elem)
		budget := gpuKVBudget(total, free, c.gpuMemoryUtilization, work+slots)
		src := fmt.Sprintf("--gpu-memory-utilization %.2f of %d bytes, less %d in use after loading, %d for workspaces and %d for %d adapter slots of rank %d",
			c.gpuMemoryUtilization, total, total-free, work, slots, loras, rank)
		if budget <= 0 {
			return kvPlan{}, fmt.Errorf("%s leaves nothing for the KV cache: raise --gpu-memory-utilization, or lower --max-loras, --max-lora-rank or --max-num-batched-tokens", src)
		}
		return kvPlan{bytes: budget, source: src, raise: "--gpu-memory-utilization"}, nil
	}
	avail, err := memAvailable()
	seqs := c.maxNumSeqs
	if seqs <= 0 {
		seqs = serve.DefaultMaxNumSeqs
	}
	if err != nil {
		// No /proc/meminfo (not Linux): room for every sequence at full length, as before.
		return kvPlan{tokens: seqs * maxModelLen, source: fmt.Sprintf("max-num-seqs x max-model-len (host memory unknown: %v)", err), raise: "--kv-cache-memory"}, nil
	}
	full := int64(seqs) * int64(maxModelLen) * cfg.KVBytesPerToken(elem)
	return kvPlan{bytes: cpuKVBudget(avail, cpuKVShare, full),
		source: fmt.Sprintf("%.2f of MemAvailable %d bytes, at most max-num-seqs x max-model-len (%d bytes)", cpuKVShare, avail, full),
		raise:  "--kv-cache-memory"}, nil
}

// gpuKVBudget is vLLM's rule: util of total, less what is already in use (total - free) and
// what will be allocated besides the cache (reserve). It may be negative.
func gpuKVBudget(total, free uint64, util float64, reserve int64) int64 {
	used := int64(total) - int64(min(free, total))
	return int64(util*float64(total)) - used - reserve
}

// cpuKVBudget is share of the available host memory, at most limit bytes.
func cpuKVBudget(avail int64, share float64, limit int64) int64 {
	return min(int64(share*float64(avail)), limit)
}

// memAvailable reads MemAvailable from /proc/meminfo.
func memAvailable() (int64, error) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	return parseMemAvailable(data)
}

// parseMemAvailable finds "MemAvailable: N kB" in a /proc/meminfo text and returns N in bytes.
func parseMemAvailable(data []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != "MemAvailable" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("/proc/meminfo: MemAvailable line %q: want N kB", sc.Text())
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 || kb > math.MaxInt64/1024 {
			return 0, fmt.Errorf("/proc/meminfo: MemAvailable %q is not a size in kB", f[0])
		}
		return kb * 1024, nil
	}
	return 0, errors.New("/proc/meminfo has no MemAvailable line")
}

// byteUnits are the suffixes parseBytes accepts: SI (k, M, G, T and KB, MB, GB, TB are powers
// of 1000, as vLLM's lowercase suffixes) and binary (KiB, MiB, GiB, TiB and Ki, Mi, Gi, Ti).
var byteUnits = map[string]float64{
	"": 1, "B": 1,
	"k": 1e3, "K": 1e3, "KB": 1e3, "kB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12,
	"Ki": 1 << 10, "KiB": 1 << 10, "Mi": 1 << 20, "MiB": 1 << 20, "Gi": 1 << 30, "GiB": 1 << 30, "Ti": 1 << 40, "TiB": 1 << 40,
}

// parseBytes parses a memory size: a number (decimals allowed) and an optional unit,
// "4GiB", "512MiB", "1.5G", "1073741824".
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(s)
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	mult, ok := byteUnits[unit]
	if !ok || num == "" {
		return 0, fmt.Errorf("%q: want a size such as 4GiB, 512MiB, 8G or a number of bytes", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v*mult >= math.MaxInt64 {
		return 0, fmt.Errorf("%q: want a size such as 4GiB, 512MiB, 8G or a number of bytes", s)
	}
	return int64(v * mult), nil
}

// reservedLoRARank is the rank adapter slots are reserved at when --max-lora-rank is not given
// (vLLM's default max_lora_rank).
const reservedLoRARank = 16
