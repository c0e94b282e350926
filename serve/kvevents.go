package serve

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/vmihailenco/msgpack/v5"
)

// KV-cache events, as vLLM publishes them for llm-d's precise prefix-cache scorer: when a full
// page enters the prefix cache's index a BlockStored event names it, when the allocator takes it
// for other contents a BlockRemoved event does, and when the index is emptied (a failed step) an
// AllBlocksCleared event says so. The engine loop collects a step's events (kvEventLog, no
// locking, nothing sent) and hands them as one batch to a bounded queue; a publisher goroutine
// encodes each batch with msgpack and sends it on a ZMQ PUB socket as [topic, sequence number
// (8 bytes, big-endian), payload]. A full queue drops the batch and counts its events
// (Stats.KVEventsDropped): the loop never waits for a subscriber.
//
// The wire format is vLLM's (vllm/distributed/kv_events.py, msgspec structs with array_like and
// omit_defaults, tagged by class name), as llm-d's kv-cache indexer decodes it
// (pkg/kvevents/engineadapter/vllm_adapter.go):
//
//	EventBatch       [ts float64, [events...], data_parallel_rank int]
//	BlockStored      ["BlockStored", [block hashes], parent hash | nil, [token ids], block_size,
//	                  lora_id (nil), medium ("GPU"), lora_name | nil]
//	BlockRemoved     ["BlockRemoved", [block hashes], medium ("GPU")]
//	AllBlocksCleared ["AllBlocksCleared"]
//
// Block hashes. loraplex's own page keys (pageKey) are SHA-256 over content and over what
// computed the page (an adapter's weights digest, not its name). llm-d's indexer keys a block by
// the FNV-64a hash of the CBOR encoding of [parent hash, the block's token ids, extra], chained
// from a root hash of [FNV-64a(seed), nil, model name], where the model name is the event's
// lora_name for an adapter's pages and the topic's model name otherwise (kvblock/token_processor.go).
// Each indexed page therefore carries that hash as a second key (llmdHasher), and the events
// name pages by it: the indexer's engine keys are then its request keys, so a prompt the router
// hashes finds the pages of this server whatever version of the indexer maps one to the other.
// Two loraplex pages may share an llm-d hash (an adapter name reloaded with other weights): the
// hash is announced when its first page is indexed and removed when its last page leaves.

// KVEventsConfig is vLLM's --kv-events-config (vllm/config/kv_events.py), a JSON object.
type KVEventsConfig struct {
	EnableKVCacheEvents bool    `json:"enable_kv_cache_events"`
	Publisher           string  `json:"publisher"`       // "zmq" or "null" (default: zmq when enabled)
	Endpoint            string  `json:"endpoint"`        // tcp:// or ipc://; bound when it holds * or :: or is ipc, dialled otherwise
	ReplayEndpoint      *string `json:"replay_endpoint"` // not supported: must be null
	BufferSteps         int     `json:"buffer_steps"`    // accepted for compatibility (replay is not supported)
	HWM                 int     `json:"hwm"`             // messages the socket holds for its subscribers; more are dropped, as libzmq's PUB does (0: no limit)
	MaxQueueSize        int     `json:"max_queue_size"`  // batches waiting to be sent; more are dropped and counted
	Topic               string  `json:"topic"`           // first frame of every message; llm-d reads "kv@<pod>@<model>"
	// HashSeed seeds the llm-d block hashes' root, as llm-d's tokenProcessorConfig.hashSeed
	// (aligned with vLLM's PYTHONHASHSEED): the server sets it from PYTHONHASHSEED, not JSON.
	HashSeed string `json:"-"`
}

// maxKVEventsQueue bounds max_queue_size: the queue holds batches, each at most a step's events.
const maxKVEventsQueue = 1 << 20

// ParseKVEventsConfig reads vLLM's --kv-events-config JSON strictly (unknown fields, trailing
// data and bad values are errors that name the field) and fills vLLM's defaults. It returns nil
// when events are not enabled.
func ParseKVEventsConfig(s string) (*KVEventsConfig, error) {
	c := KVEventsConfig{Endpoint: "tcp://*:5557", BufferSteps: 10000, HWM: 100000, MaxQueueSize: 100000}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("kv events config: %w", err)
	}
	if dec.More() {
		return nil, errors.New("kv events config: trailing data after the JSON object")
	}
	if c.Publisher == "" {
		c.Publisher = "null"
		if c.EnableKVCacheEvents {
			c.Publisher = "zmq"
		}
	}
	switch c.Publisher {
	case "zmq", "null":
	default:
		return nil, fmt.Errorf("kv events config: publisher %q: want \"zmq\" or \"null\"", c.Publisher)
	}
	if c.ReplayEndpoint != nil {
		return nil, errors.New("kv events config: replay_endpoint is not supported (llm-d's indexer does not use it); leave it null")
	}
	if !strings.HasPrefix(c.Endpoint, "tcp://") && !strings.HasPrefix(c.Endpoint, "ipc://") {
		return nil, fmt.Errorf("kv events config: endpoint %q: want tcp://HOST:PORT or ipc://PATH", c.Endpoint)
	}
	for _, v := range []struct {
		name string
		n    int
	}{{"buffer_steps", c.BufferSteps}, {"hwm", c.HWM}, {"max_queue_size", c.MaxQueueSize}} {
		if v.n < 0 {
			return nil, fmt.Errorf("kv events config: %s must not be negative, got %d", v.name, v.n)
		}
	}
	if c.MaxQueueSize == 0 || c.MaxQueueSize > maxKVEventsQueue {
		return nil, fmt.Errorf("kv events config: max_queue_size must be in 1..%d, got %d", maxKVEventsQueue, c.MaxQueueSize)
	}
	if !c.EnableKVCacheEvents || c.Publisher == "null" {
		return nil, nil
	}
	return &c, nil
}

// modelName is the name llm-d hashes base-model pages under: the topic's model part when the
// topic has llm-d's form kv@<pod>@<model> (llm-d takes it from there), else the served name.
func (c *KVEventsConfig) modelName(served string) string {
	if parts := strings.Split(c.Topic, "@"); len(parts) == 3 && parts[0] == "kv" {
		return parts[2]
	}
	return served
}

// llmdHasher computes llm-d's block hashes (see above) without allocating: CBOR is written by
// hand into a reused buffer, canonical (shortest) as llm-d's encoder writes it.
type llmdHasher struct {
	seed uint64 // FNV-64a of the hash seed
	buf  []byte
}

func newLLMDHasher(seed string) *llmdHasher {
	h := fnv.New64a()
	h.Write([]byte(seed))
	return &llmdHasher{seed: h.Sum64()}
}

// root is the parent of a model's first block: the hash of [seed, nil, name].
func (h *llmdHasher) root(name string) uint64 {
	b := append(h.buf[:0], 0x83)
	b = cborHead(b, 0, h.seed)
	b = append(b, 0xf6)
	b = cborHead(b, 3, uint64(len(name)))
	b = append(b, name...)
	h.buf = b
	return fnv64a(b)
}

// block is the hash of [parent, tokens, nil].
func (h *llmdHasher) block(parent uint64, tokens []int) uint64 {
	b := append(h.buf[:0], 0x83)
	b = cborHead(b, 0, parent)
	b = cborHead(b, 4, uint64(len(tokens)))
	for _, t := range tokens {
		b = cborHead(b, 0, uint64(uint32(t)))
	}
	b = append(b, 0xf6)
	h.buf = b
	return fnv64a(b)
}

// cborHead appends a CBOR item head of major type major with argument v, shortest form.
func cborHead(b []byte, major byte, v uint64) []byte {
	m := major << 5
	switch {
	case v < 24:
		return append(b, m|byte(v))
	case v <= 0xff:
		return append(b, m|24, byte(v))
	case v <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, m|25), uint16(v))
	case v <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(b, m|26), uint32(v))
	default:
		return binary.BigEndian.AppendUint64(append(b, m|27), v)
	}
}

func fnv64a(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// kvEventKind tells the three events apart.
type kvEventKind uint8

const (
	kvBlockStored kvEventKind = iota
	kvBlockRemoved
	kvAllBlocksCleared
)

// kvEvent is one event of a batch. A stored event's tokens are its pages' tokens, in order.
type kvEvent struct {
	kind      kvEventKind
	hashes    []uint64
	parent    uint64
	hasParent bool
	tokens    []int
	loraName  string // "" for the base model
}

// kvEventLog collects the engine loop's events until the step's end (flush). It lives in the loop
// (the page allocator writes removals and clears into it); a nil log records nothing.
type kvEventLog struct {
	hasher  *llmdHasher
	model   string // the base model's name for hashing
	refs    map[uint64]int32
	events  []kvEvent
	queue   chan kvBatch
	dropped func(n int)
}

type kvBatch struct {
	ts     float64
	events []kvEvent
}

// stored records pages whose llm-d hashes are hashes (parent: the hash before the first, when
// hasParent), holding tokens, computed by loraName's weights ("" for the base model). Hashes
// already announced by another page are left out of the event, which splits around them.
func (l *kvEventLog) stored(hashes []uint64, parent uint64, hasParent bool, tokens []int, pageSize int, loraName string) {
	start := -1
	emit := func(end int) {
		if start < 0 {
			return
		}
		ev := kvEvent{kind: kvBlockStored, hashes: append([]uint64(nil), hashes[start:end]...),
			tokens: append([]int(nil), tokens[start*pageSize:end*pageSize]...), loraName: loraName,
			parent: parent, hasParent: hasParent}
		if start > 0 {
			ev.parent, ev.hasParent = hashes[start-1], true
		}
		l.events = append(l.events, ev)
		start = -1
	}
	for i, h := range hashes {
		if l.refs[h]++; l.refs[h] > 1 {
			emit(i)
			continue
		}
		if start < 0 {
			start = i
		}
	}
	emit(len(hashes))
}

// removed records that a page of llm-d hash h left the index; the hash is announced as removed
// once no indexed page carries it. Removals in a row share one event.
func (l *kvEventLog) removed(h uint64) {
	if l.refs[h]--; l.refs[h] > 0 {
		return
	}
	delete(l.refs, h)
	if n := len(l.events); n > 0 && l.events[n-1].kind == kvBlockRemoved {
		l.events[n-1].hashes = append(l.events[n-1].hashes, h)
		return
	}
	l.events = append(l.events, kvEvent{kind: kvBlockRemoved, hashes: []uint64{h}})
}

// cleared records that the index was emptied: what the step recorded before no longer matters.
func (l *kvEventLog) cleared() {
	clear(l.refs)
	l.events = append(l.events[:0], kvEvent{kind: kvAllBlocksCleared})
}

// flush hands the recorded events to the publisher as one batch, or counts them dropped when
// its queue is full.
func (l *kvEventLog) flush() {
	if len(l.events) == 0 {
		return
	}
	b := kvBatch{ts: float64(time.Now().UnixNano()) / 1e9, events: l.events}
	select {
	case l.queue <- b:
		l.events = nil // the batch owns them now
	default:
		l.dropped(len(l.events))
		clear(l.events)
		l.events = l.events[:0]
	}
}

// kvPublisher sends batches from the queue on a ZMQ PUB socket.
type kvPublisher struct {
	sock  zmq4.Socket
	topic []byte
	queue chan kvBatch
	done  chan struct{}
	once  sync.Once
	log   func(msg string, args ...any)
}

// newKVPublisher binds (or dials, as vLLM decides) the PUB socket and starts sending.
func newKVPublisher(c *KVEventsConfig, logErr func(string, ...any)) (*kvPublisher, error) {
	sock := zmq4.NewPub(context.Background(), zmq4.WithTimeout(5*time.Second))
	var err error
	if c.HWM > 0 {
		// A stuck subscriber holds the socket's queue, not the engine: past hwm, messages drop.
		if err := sock.SetOption(zmq4.OptionHWM, c.HWM); err != nil {
			sock.Close()
			return nil, fmt.Errorf("kv events: hwm: %w", err)
		}
	}
	if strings.Contains(c.Endpoint, "*") || strings.Contains(c.Endpoint, "::") || strings.HasPrefix(c.Endpoint, "ipc://") {
		err = sock.Listen(c.Endpoint)
	} else {
		err = sock.Dial(c.Endpoint)
	}
	if err != nil {
		sock.Close()
		return nil, fmt.Errorf("kv events: endpoint %s: %w", c.Endpoint, err)
	}
	p := &kvPublisher{sock: sock, topic: []byte(c.Topic), queue: make(chan kvBatch, c.MaxQueueSize), done: make(chan struct{}), log: logErr}
	go p.run()
	return p, nil
}

func (p *kvPublisher) run() {
	defer close(p.done)
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	for seq := uint64(0); ; seq++ {
		b, ok := <-p.queue
		if !ok {
			return
		}
		buf.Reset()
		if err := encodeKVBatch(enc, b); err != nil {
			p.log("kv events: encoding a batch failed", "err", err)
			continue
		}
		var seqBytes [8]byte
		binary.BigEndian.PutUint64(seqBytes[:], seq)
		payload := append([]byte(nil), buf.Bytes()...)
		if err := p.sock.SendMulti(zmq4.NewMsgFrom(p.topic, seqBytes[:], payload)); err != nil {
			p.log("kv events: sending a batch failed", "err", err)
		}
	}
}

// close sends what is queued (for at most a second) and closes the socket. The engine loop,
// the queue's only writer, has stopped.
func (p *kvPublisher) close() {
	p.once.Do(func() {
		close(p.queue)
		select {
		case <-p.done:
		case <-time.After(time.Second):
		}
		p.sock.Close()
	})
}

// encodeKVBatch writes b as vLLM's EventBatch (array form, data_parallel_rank 0).
func encodeKVBatch(enc *msgpack.Encoder, b kvBatch) error {
	w := &msgpackWriter{enc: enc}
	w.arrayLen(3)
	w.do(enc.EncodeFloat64(b.ts))
	w.arrayLen(len(b.events))
	for _, ev := range b.events {
		switch ev.kind {
		case kvBlockStored:
			w.arrayLen(8)
			w.do(enc.EncodeString("BlockStored"))
			w.hashes(ev.hashes)
			if ev.hasParent {
				w.do(enc.EncodeUint(ev.parent))
			} else {
				w.do(enc.EncodeNil())
			}
			w.arrayLen(len(ev.tokens))
			for _, t := range ev.tokens {
				w.do(enc.EncodeUint(uint64(uint32(t))))
			}
			w.do(enc.EncodeInt(int64(len(ev.tokens) / len(ev.hashes))))
			w.do(enc.EncodeNil()) // lora_id: deprecated in vLLM, lora_name names the adapter
			w.do(enc.EncodeString("GPU"))
			if ev.loraName != "" {
				w.do(enc.EncodeString(ev.loraName))
			} else {
				w.do(enc.EncodeNil())
			}
		case kvBlockRemoved:
			w.arrayLen(3)
			w.do(enc.EncodeString("BlockRemoved"))
			w.hashes(ev.hashes)
			w.do(enc.EncodeString("GPU"))
		case kvAllBlocksCleared:
			w.arrayLen(1)
			w.do(enc.EncodeString("AllBlocksCleared"))
		}
	}
	w.do(enc.EncodeInt(0)) // data_parallel_rank: one engine per process
	return w.err
}

// msgpackWriter keeps the first encoding error so encodeKVBatch reads as the format it writes.
type msgpackWriter struct {
	enc *msgpack.Encoder
	err error
}

func (w *msgpackWriter) do(err error) {
	if w.err == nil {
		w.err = err
	}
}

func (w *msgpackWriter) arrayLen(n int) { w.do(w.enc.EncodeArrayLen(n)) }

func (w *msgpackWriter) hashes(hs []uint64) {
	w.arrayLen(len(hs))
	for _, h := range hs {
		w.do(w.enc.EncodeUint(h))
	}
}
