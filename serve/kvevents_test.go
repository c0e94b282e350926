package serve

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/kvevtest"
)

// llmdHashes is llm-d's recomputation of the block hashes (kvevtest.LLMDHashes).
func llmdHashes(t *testing.T, seed, model string, tokens []int, blockSize int) []uint64 {
	t.Helper()
	h, err := kvevtest.LLMDHashes(seed, model, tokens, blockSize)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// kvSubscriber is a real ZMQ SUB socket on loopback, subscribed to an engine's publisher.
type kvSubscriber struct {
	t   *testing.T
	sub *kvevtest.Subscriber
}

func subscribe(t *testing.T, e *Engine, topic string) *kvSubscriber {
	t.Helper()
	sub, err := kvevtest.Dial(fmt.Sprintf("tcp://127.0.0.1:%d", e.KVEventsAddr().(*net.TCPAddr).Port), topic)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	waitSubscribed(t, e, topic)
	return &kvSubscriber{t: t, sub: sub}
}

// waitSubscribed waits until e's publisher has a subscriber to topic: a PUB socket drops what it
// sends before a subscription reaches it.
func waitSubscribed(t *testing.T, e *Engine, topic string) {
	t.Helper()
	pub := e.kvPub.sock.(interface{ Topics() []string })
	for deadline := time.Now().Add(5 * time.Second); !slices.Contains(pub.Topics(), topic); {
		if time.Now().After(deadline) {
			t.Fatal("the subscription never reached the publisher")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// next receives and decodes one batch (kvevtest.Subscriber.Next checks its frames and shape).
func (s *kvSubscriber) next() []kvevtest.Event {
	s.t.Helper()
	evs, err := s.sub.Next(10 * time.Second)
	if err != nil {
		s.t.Fatal(err)
	}
	return evs
}

func kvEventsConfig(t *testing.T, topic string) *KVEventsConfig {
	t.Helper()
	c, err := ParseKVEventsConfig(fmt.Sprintf(`{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://127.0.0.1:*", "topic": %q}`, topic))
	if err != nil {
		t.Fatal(err)
	}
	c.HashSeed = "42"
	return c
}

func promptOf(n, salt int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = 1 + (i*7+salt*13)%250
	}
	return p
}

// A prompt's full pages are published as stored, as vLLM publishes them: block hashes equal to
// llm-d's own recomputation from the tokens (seed, block size, and the topic's model name for the
// base model, lora_name for an adapter), chained through parent_block_hash, with the pages'
// token ids, block_size, medium "GPU" and lora_name naming the adapter; a second run of the same
// prompt reuses the pages and publishes nothing new.
func TestKVEventsPublishStoredPages(t *testing.T) {
	const topic = "kv@pod-a@llama-base"
	e := newTestEngine(t, "llama", nil, Options{PageSize: 4, KVEvents: kvEventsConfig(t, topic)})
	sub := subscribe(t, e, topic)
	for _, c := range []struct {
		adapter, hashedAs string
		loraName          any
	}{{"", "llama-base", nil}, {"a_qv", "a_qv", "a_qv"}} {
		prompt := promptOf(13, len(c.adapter))
		ev := generate(t, e, Request{Model: c.adapter, Prompt: prompt, Params: greedyParams(4)})
		seq := append(slices.Clone(prompt), ev.Tokens...) // the 16 tokens computed: 4 full pages
		var stored []kvevtest.Event
		for n := 0; n < 16; {
			for _, d := range sub.next() {
				if d.Tag != "BlockStored" {
					t.Fatalf("%q: unexpected %s event", c.adapter, d.Tag)
				}
				stored, n = append(stored, d), n+len(d.TokenIDs)
			}
		}
		want := llmdHashes(t, "42", c.hashedAs, seq[:16], 4)
		var hashes []uint64
		var tokens []int
		for i, d := range stored {
			var parent any
			if len(hashes) > 0 {
				parent = hashes[len(hashes)-1]
			}
			if fmt.Sprint(d.Parent) != fmt.Sprint(parent) {
				t.Fatalf("%q event %d: parent %v, want %v", c.adapter, i, d.Parent, parent)
			}
			if d.BlockSize != 4 || d.LoRAID != nil || d.Medium != "GPU" || d.LoRAName != c.loraName {
				t.Fatalf("%q event %d: block_size %d lora_id %v medium %v lora_name %v", c.adapter, i, d.BlockSize, d.LoRAID, d.Medium, d.LoRAName)
			}
			hashes, tokens = append(hashes, d.Hashes...), append(tokens, d.TokenIDs...)
		}
		if fmt.Sprint(hashes) != fmt.Sprint(want) {
			t.Fatalf("%q: block hashes %v, want llm-d's %v", c.adapter, hashes, want)
		}
		if fmt.Sprint(tokens) != fmt.Sprint(seq[:16]) {
			t.Fatalf("%q: token ids %v, want %v", c.adapter, tokens, seq[:16])
		}
	}
	// The same prompt again: its pages are cached, nothing is stored; the next batch seen is
	// the one for a new prompt.
	generate(t, e, Request{Prompt: promptOf(13, 0), Params: greedyParams(1)})
	generate(t, e, Request{Prompt: promptOf(5, 9), Params: greedyParams(1)})
	d := sub.next()
	if len(d) != 1 || d[0].Tag != "BlockStored" || fmt.Sprint(d[0].TokenIDs) != fmt.Sprint(promptOf(5, 9)[:4]) {
		t.Fatalf("after a cached prompt, events %+v: want only the new prompt's page", d)
	}
	waitIdle(t, e)
}

// An endpoint without a wildcard is dialled, as vLLM does (a central indexer binds, the model
// servers connect): a subscriber bound on loopback receives the stored pages.
func TestKVEventsDialOut(t *testing.T) {
	sub, err := kvevtest.Listen("tcp://127.0.0.1:0", "kv@pod-b@llama")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	c := kvEventsConfig(t, "kv@pod-b@llama")
	c.Endpoint = "tcp://" + sub.Addr().String()
	e := newTestEngine(t, "llama", nil, Options{PageSize: 4, KVEvents: c})
	if e.KVEventsAddr() != nil {
		t.Fatalf("a dialling publisher reports a listening address %v", e.KVEventsAddr())
	}
	waitSubscribed(t, e, "kv@pod-b@llama")
	prompt := promptOf(9, 4)
	generate(t, e, Request{Prompt: prompt, Params: greedyParams(1)})
	evs, err := sub.Next(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Tag != "BlockStored" || !slices.Equal(evs[0].Hashes, llmdHashes(t, "42", "llama", prompt[:8], 4)) {
		t.Fatalf("events %+v: want the prompt's two pages stored", evs)
	}
	waitIdle(t, e)
}

// Pages the allocator takes back for other contents are published as removed, by the llm-d
// hashes they were stored under.
func TestKVEventsPublishRemovedPages(t *testing.T) {
	const topic = "kv@pod-a@llama"
	e := newTestEngine(t, "llama", nil, Options{PageSize: 4, MaxModelLen: 32, KVCacheTokens: 32, KVEvents: kvEventsConfig(t, topic)})
	sub := subscribe(t, e, topic)
	first := promptOf(13, 1)
	generate(t, e, Request{Prompt: first, Params: greedyParams(2)}) // 3 full pages indexed
	var stored []uint64
	for len(stored) < 3 {
		for _, d := range sub.next() {
			stored = append(stored, d.Hashes...)
		}
	}
	if want := llmdHashes(t, "42", "llama", first, 4); fmt.Sprint(stored) != fmt.Sprint(want) {
		t.Fatalf("stored %v, want %v", stored, want)
	}
	// 29 prompt tokens and a generated one need all 8 pages: the cached three are evicted.
	generate(t, e, Request{Prompt: promptOf(29, 2), Params: greedyParams(2)})
	var removed []uint64
	for deadline := time.Now().Add(10 * time.Second); len(removed) < 3 && time.Now().Before(deadline); {
		for _, d := range sub.next() {
			if d.Tag == "BlockRemoved" {
				if d.Medium != "GPU" {
					t.Fatalf("removed medium %v", d.Medium)
				}
				removed = append(removed, d.Hashes...)
			}
		}
	}
	slices.Sort(removed)
	slices.Sort(stored)
	if fmt.Sprint(removed) != fmt.Sprint(stored) {
		t.Fatalf("removed %v, want the evicted pages %v", removed, stored)
	}
	if got := e.Stats().PrefixCacheEvictions.Load(); got != 3 {
		t.Fatalf("%d evictions, want 3", got)
	}
	waitIdle(t, e)
}

// A failed step empties the prefix cache's index, and the events say so: AllBlocksCleared,
// with nothing stored for the failed step's pages; the prompt run again is stored anew.
func TestKVEventsPublishAllClearedOnAFailedStep(t *testing.T) {
	const topic = "kv@pod-a@llama"
	b := &panicky{Backend: cpu.New(2)}
	t.Cleanup(b.Close)
	e := fixtureEngine(t, "llama", b, nil, Options{PageSize: 4, KVEvents: kvEventsConfig(t, topic)}, nil)
	sub := subscribe(t, e, topic)
	prompt := promptOf(13, 3)
	b.armed.Store(true)
	s, err := e.Generate(context.Background(), Request{Prompt: prompt, Params: greedyParams(2)})
	if err != nil {
		t.Fatal(err)
	}
	if ev, _ := s.Collect(context.Background()); ev.Finish != "error" {
		t.Fatalf("finish %q with the fault armed", ev.Finish)
	}
	b.armed.Store(false)
	if d := sub.next(); len(d) != 1 || d[0].Tag != "AllBlocksCleared" {
		t.Fatalf("after a failed step, events %+v: want AllBlocksCleared alone", d)
	}
	generate(t, e, Request{Prompt: prompt, Params: greedyParams(2)})
	var stored []uint64
	for len(stored) < 3 {
		for _, d := range sub.next() {
			stored = append(stored, d.Hashes...)
		}
	}
	if want := llmdHashes(t, "42", "llama", prompt, 4); fmt.Sprint(stored) != fmt.Sprint(want) {
		t.Fatalf("stored %v, want %v", stored, want)
	}
	waitIdle(t, e)
}

// Two pages with one llm-d hash (an adapter name reloaded with other weights) are announced
// once, and removed only when the last of them leaves the index.
func TestKVEventLogCountsSharedHashes(t *testing.T) {
	l := &kvEventLog{refs: map[uint64]int32{}}
	l.stored([]uint64{1, 2}, 0, false, []int{1, 2, 3, 4}, 2, "")
	l.stored([]uint64{1, 3}, 0, false, []int{1, 2, 5, 6}, 2, "x")
	l.removed(1)
	l.removed(2)
	l.removed(1)
	var got []string
	for _, ev := range l.events {
		got = append(got, fmt.Sprintf("%d%v%v/%d%v", ev.kind, ev.hashes, ev.tokens, ev.parent, ev.hasParent))
	}
	want := []string{"0[1 2][1 2 3 4]/0false", "0[3][5 6]/1true", "1[2 1][]/0false"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

// A full queue never blocks the engine loop: the batch is dropped and its events counted.
func TestKVEventLogDropsWhenTheQueueIsFull(t *testing.T) {
	var dropped int
	l := &kvEventLog{refs: map[uint64]int32{}, queue: make(chan kvBatch, 1), dropped: func(n int) { dropped += n }}
	l.stored([]uint64{1}, 0, false, []int{1, 2}, 2, "")
	l.flush()
	l.stored([]uint64{2}, 0, false, []int{3, 4}, 2, "")
	l.removed(1)
	l.flush()
	if dropped != 2 || len(l.queue) != 1 || len(l.events) != 0 {
		t.Fatalf("dropped %d, queued %d, left %d: want 2 dropped, the first batch queued, none left", dropped, len(l.queue), len(l.events))
	}
}

// --kv-events-config is read as vLLM reads it, strictly: vLLM's defaults, off unless enabled
// with a publisher, and every bad field named in the error.
func TestParseKVEventsConfig(t *testing.T) {
	c, err := ParseKVEventsConfig(`{"enable_kv_cache_events": true, "topic": "kv@p@m"}`)
	if err != nil || c == nil || c.Publisher != "zmq" || c.Endpoint != "tcp://*:5557" || c.MaxQueueSize != 100000 || c.Topic != "kv@p@m" {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	if c.modelName("served") != "m" {
		t.Fatalf("model name from topic kv@p@m: %q", c.modelName("served"))
	}
	for _, off := range []string{`{}`, `{"enable_kv_cache_events": false, "publisher": "zmq"}`, `{"enable_kv_cache_events": true, "publisher": "null"}`} {
		if c, err := ParseKVEventsConfig(off); c != nil || err != nil {
			t.Fatalf("%s: %+v, %v: want off", off, c, err)
		}
	}
	for in, want := range map[string]string{
		`{"enable_kv_cache_events": true, "publisher": "kafka"}`:               `publisher "kafka"`,
		`{"enable_kv_cache_events": true, "endpoint": "http://x:1"}`:           `endpoint "http://x:1"`,
		`{"enable_kv_cache_events": true, "replay_endpoint": "tcp://*:5558"}`:  `replay_endpoint`,
		`{"enable_kv_cache_events": true, "max_queue_size": 0}`:                `max_queue_size`,
		`{"enable_kv_cache_events": true, "hwm": -1}`:                          `hwm must not be negative`,
		`{"enable_kv_cache_events": true, "topics": "x"}`:                      `unknown field "topics"`,
		`{"enable_kv_cache_events": true} {}`:                                  `trailing data`,
		`{"enable_kv_cache_events": "yes"}`:                                    `enable_kv_cache_events`,
		`[1]`:                                                                  `kv events config`,
		`{"enable_kv_cache_events": true, "max_queue_size": 1000000000000000}`: `max_queue_size`,
	} {
		if _, err := ParseKVEventsConfig(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one naming %q", in, err, want)
		}
	}
}

// The parser never panics, and what it accepts is usable: a tcp or ipc endpoint and a bounded
// queue.
func FuzzParseKVEventsConfig(f *testing.F) {
	for _, s := range []string{`{}`, `{"enable_kv_cache_events": true}`, `{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557", "topic": "kv@a@b", "buffer_steps": 1, "hwm": 2, "max_queue_size": 3}`,
		`{"enable_kv_cache_events": true, "replay_endpoint": null}`, `{"endpoint": 1}`, `nul`, ``} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseKVEventsConfig(s)
		if err != nil || c == nil {
			return
		}
		if !c.EnableKVCacheEvents || c.Publisher != "zmq" || c.MaxQueueSize < 1 || c.MaxQueueSize > maxKVEventsQueue ||
			!strings.HasPrefix(c.Endpoint, "tcp://") && !strings.HasPrefix(c.Endpoint, "ipc://") {
			t.Fatalf("%q accepted as %+v", s, c)
		}
	})
}

// Events need the prefix cache they describe: asking for both off is an error, not silence.
func TestKVEventsNeedPrefixCaching(t *testing.T) {
	b := cpu.New(2)
	t.Cleanup(b.Close)
	cfg, w := fixture.LoadModel(t, fixtureDir("llama"), b)
	if _, err := NewEngine(cfg, b, w, nil, Options{DisablePrefixCaching: true, KVEvents: kvEventsConfig(t, "x")}); err == nil || !strings.Contains(err.Error(), "prefix caching") {
		t.Fatalf("error %v, want one saying events need prefix caching", err)
	}
}

// The hand-written CBOR of llmdHasher is llm-d's canonical encoding for every token id and
// parent a model can have: ids across the whole uint32 range (heads of 1, 2, 3 and 5 bytes, as
// in 150k-token vocabularies), any block size, empty and long model names.
func TestLLMDHasherMatchesLLMD(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200; i++ {
		size := 1 + rng.IntN(40)
		tokens := make([]int, size*(1+rng.IntN(4)))
		for j := range tokens {
			switch rng.IntN(5) {
			case 0:
				tokens[j] = rng.IntN(24)
			case 1:
				tokens[j] = rng.IntN(256)
			case 2:
				tokens[j] = rng.IntN(1 << 16)
			case 3:
				tokens[j] = rng.IntN(200000)
			default:
				tokens[j] = int(rng.Uint32())
			}
		}
		model := strings.Repeat("m", rng.IntN(300))
		seed := fmt.Sprint(rng.IntN(1000))
		h := newLLMDHasher(seed)
		parent := h.root(model)
		var got []uint64
		for j := 0; j < len(tokens); j += size {
			parent = h.block(parent, tokens[j:j+size])
			got = append(got, parent)
		}
		if want := llmdHashes(t, seed, model, tokens, size); !slices.Equal(got, want) {
			t.Fatalf("seed %q model of %d bytes, block size %d: %v, want llm-d's %v", seed, len(model), size, got, want)
		}
	}
}

// The llm-d hash of one 16-token page, computed in the engine loop as the page fills: no
// allocation once the buffer has grown.
func BenchmarkLLMDHasherBlock(b *testing.B) {
	h := newLLMDHasher("")
	tokens := promptOf(16, 1)
	for i := range tokens {
		tokens[i] *= 600 // ids of a 150k vocabulary: 5-byte CBOR heads
	}
	parent := h.root("llama")
	b.ReportAllocs()
	for b.Loop() {
		parent = h.block(parent, tokens)
	}
}
