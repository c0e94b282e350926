// Package kvevtest is the test side of KV-cache events (serve/kvevents.go): a real ZMQ SUB
// socket that decodes batches the way llm-d's kv-cache indexer does (msgpack arrays, tag first,
// fields by position), and llm-d's block hashes recomputed independently of the server, with
// the CBOR library llm-d's indexer uses.
package kvevtest

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/go-zeromq/zmq4"
	"github.com/vmihailenco/msgpack/v5"
)

// LLMDHashes recomputes llm-d's block hashes for tokens as its indexer does
// (pkg/kvcache/kvblock/token_processor.go): FNV-64a over the canonical CBOR encoding of
// [parent, block tokens, nil], chained from [FNV-64a(seed), nil, model]; partial blocks have none.
func LLMDHashes(seed, model string, tokens []int, blockSize int) ([]uint64, error) {
	enc, err := cbor.CanonicalEncOptions().EncMode()
	if err != nil {
		return nil, err
	}
	hash := func(parent uint64, chunk []uint32, extra any) (uint64, error) {
		b, err := enc.Marshal([]any{parent, chunk, extra})
		if err != nil {
			return 0, err
		}
		h := fnv.New64a()
		h.Write(b)
		return h.Sum64(), nil
	}
	s := fnv.New64a()
	s.Write([]byte(seed))
	parent, err := hash(s.Sum64(), nil, model)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for i := 0; i+blockSize <= len(tokens); i += blockSize {
		chunk := make([]uint32, blockSize)
		for j := range chunk {
			chunk[j] = uint32(tokens[i+j])
		}
		if parent, err = hash(parent, chunk, nil); err != nil {
			return nil, err
		}
		out = append(out, parent)
	}
	return out, nil
}

// Event is one decoded event. Stored events fill every field; removed ones Tag, Hashes and
// Medium; AllBlocksCleared only Tag.
type Event struct {
	Tag       string
	Hashes    []uint64
	Parent    any // nil or the parent's hash (uint64)
	TokenIDs  []int
	BlockSize int
	LoRAID    any
	Medium    any
	LoRAName  any
}

// Subscriber is a ZMQ SUB socket subscribed to one topic.
type Subscriber struct {
	sock  zmq4.Socket
	topic string
	seq   uint64
	msgs  chan zmq4.Msg
	errs  chan error
}

// Dial connects a SUB socket to endpoint (tcp://HOST:PORT) and subscribes to topic.
func Dial(endpoint, topic string) (*Subscriber, error) {
	return open(endpoint, topic, false)
}

// Listen binds a SUB socket on endpoint, for publishers that dial out (vLLM's endpoints without
// a wildcard), and subscribes to topic; Addr gives the bound address.
func Listen(endpoint, topic string) (*Subscriber, error) {
	return open(endpoint, topic, true)
}

// Addr is the address a Listen subscriber is bound to.
func (s *Subscriber) Addr() net.Addr { return s.sock.Addr() }

func open(endpoint, topic string, listen bool) (*Subscriber, error) {
	sock := zmq4.NewSub(context.Background())
	connect := sock.Dial
	if listen {
		connect = sock.Listen
	}
	if err := connect(endpoint); err != nil {
		sock.Close()
		return nil, err
	}
	if err := sock.SetOption(zmq4.OptionSubscribe, topic); err != nil {
		sock.Close()
		return nil, err
	}
	s := &Subscriber{sock: sock, topic: topic, msgs: make(chan zmq4.Msg, 64), errs: make(chan error, 1)}
	go func() {
		for {
			m, err := sock.Recv()
			if err != nil {
				s.errs <- err
				return
			}
			s.msgs <- m
		}
	}()
	return s, nil
}

// Close closes the socket.
func (s *Subscriber) Close() error { return s.sock.Close() }

// Next receives one batch within timeout, checks its frames ([topic, sequence number as 8
// bytes big-endian, payload]; sequence numbers count up from the first one received) and its
// shape ([ts, events, data_parallel_rank 0]), and decodes its events.
func (s *Subscriber) Next(timeout time.Duration) ([]Event, error) {
	var m zmq4.Msg
	select {
	case m = <-s.msgs:
	case err := <-s.errs:
		return nil, err
	case <-time.After(timeout):
		return nil, fmt.Errorf("no KV event batch within %v", timeout)
	}
	if len(m.Frames) != 3 || string(m.Frames[0]) != s.topic || len(m.Frames[1]) != 8 {
		return nil, fmt.Errorf("frames %q: want [topic, 8-byte sequence number, payload]", m.Frames)
	}
	seq := binary.BigEndian.Uint64(m.Frames[1])
	if s.seq != 0 && seq != s.seq {
		return nil, fmt.Errorf("sequence number %d, want %d", seq, s.seq)
	}
	s.seq = seq + 1
	var batch []msgpack.RawMessage
	if err := msgpack.Unmarshal(m.Frames[2], &batch); err != nil {
		return nil, err
	}
	var ts float64
	var raw []msgpack.RawMessage
	var rank int
	if len(batch) != 3 || msgpack.Unmarshal(batch[0], &ts) != nil || msgpack.Unmarshal(batch[1], &raw) != nil ||
		msgpack.Unmarshal(batch[2], &rank) != nil || rank != 0 || time.Since(time.Unix(int64(ts), 0)).Abs() > time.Minute {
		return nil, fmt.Errorf("batch %x: want [ts, events, 0]", m.Frames[2])
	}
	var out []Event
	for _, r := range raw {
		ev, err := decodeEvent(r)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

func decodeEvent(r []byte) (Event, error) {
	var f []any
	if err := msgpack.Unmarshal(r, &f); err != nil {
		return Event{}, err
	}
	if len(f) == 0 {
		return Event{}, fmt.Errorf("event without a tag")
	}
	tag, _ := f[0].(string)
	ev := Event{Tag: tag}
	var err error
	switch tag {
	case "BlockStored":
		if len(f) != 8 {
			return ev, fmt.Errorf("BlockStored has %d fields, want 8: %v", len(f), f)
		}
		if ev.Hashes, err = uints(f[1]); err != nil {
			return ev, err
		}
		var tokens []uint64
		if tokens, err = uints(f[3]); err != nil {
			return ev, err
		}
		for _, t := range tokens {
			ev.TokenIDs = append(ev.TokenIDs, int(t))
		}
		size, err := uints([]any{f[4]})
		if err != nil {
			return ev, err
		}
		ev.Parent, ev.BlockSize, ev.LoRAID, ev.Medium, ev.LoRAName = f[2], int(size[0]), f[5], f[6], f[7]
		if ev.Parent != nil {
			p, err := uints([]any{f[2]})
			if err != nil {
				return ev, err
			}
			ev.Parent = p[0]
		}
	case "BlockRemoved":
		if len(f) != 3 {
			return ev, fmt.Errorf("BlockRemoved has %d fields, want 3: %v", len(f), f)
		}
		ev.Hashes, err = uints(f[1])
		ev.Medium = f[2]
	case "AllBlocksCleared":
		if len(f) != 1 {
			return ev, fmt.Errorf("AllBlocksCleared has %d fields, want 1: %v", len(f), f)
		}
	default:
		return ev, fmt.Errorf("unknown event tag %v", f[0])
	}
	return ev, err
}

// uints reads a msgpack array of non-negative integers (msgpack picks the narrowest type).
func uints(v any) ([]uint64, error) {
	a, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%v is a %T, want an array", v, v)
	}
	out := make([]uint64, 0, len(a))
	for _, x := range a {
		switch n := x.(type) {
		case uint64:
			out = append(out, n)
		case uint32:
			out = append(out, uint64(n))
		case uint16:
			out = append(out, uint64(n))
		case uint8:
			out = append(out, uint64(n))
		case int64:
			out = append(out, uint64(n))
		case int32:
			out = append(out, uint64(n))
		case int16:
			out = append(out, uint64(n))
		case int8:
			out = append(out, uint64(n))
		default:
			return nil, fmt.Errorf("%v is a %T, want an integer", x, x)
		}
	}
	return out, nil
}
