package serve

import (
	"errors"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/model"
)

// A KV cache sized from memory holds the budget's whole pages (512 bytes a token for the tiny
// Llama on the CPU), never more than 4M tokens however large the budget (its page tables live
// in host memory), and a budget short of one sequence of max-model-len is ErrKVCacheTooSmall.
func TestKVCacheSizedFromMemory(t *testing.T) {
	e := newBareEngine(t, "llama", Options{MaxModelLen: 128, KVCacheMemory: 100_000})
	if o := e.Options(); o.KVCacheTokens != 192 || o.KVCacheMemory != 192*512 {
		t.Errorf("100,000 bytes: %d tokens in %d bytes, want 192 (12 pages of 16) in %d", o.KVCacheTokens, o.KVCacheMemory, 192*512)
	}
	e = newBareEngine(t, "llama", Options{MaxModelLen: 128, KVCacheMemory: 1 << 40})
	if o := e.Options(); o.KVCacheTokens != maxMemoryKVTokens {
		t.Errorf("1 TiB: %d tokens, want the %d bound", o.KVCacheTokens, maxMemoryKVTokens)
	}
	dir := fixtureDir("llama")
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := cpu.New(1)
	defer b.Close()
	w, err := model.LoadWeights(dir, cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	_, err = NewEngine(cfg, b, w, nil, Options{MaxModelLen: 128, KVCacheMemory: 127 * 512})
	if !errors.Is(err, ErrKVCacheTooSmall) {
		t.Errorf("127 tokens' bytes for 128-token sequences: %v, want ErrKVCacheTooSmall", err)
	}
}
