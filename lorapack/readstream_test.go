package lorapack

import (
	"bytes"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// The one-pass copy gives the stream's bytes and the CRC-32C of all of them, whatever its length
// against the chunk the copy and the sum share.
func TestCopySumIsTheStreamsChecksum(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, copySumChunk - 1, copySumChunk, copySumChunk + 1, 3*copySumChunk + 7} {
		src := make([]byte, n)
		for i := range src {
			src[i] = byte(r.Uint32())
		}
		dst := make([]byte, n)
		if sum := copySum(dst, src); sum != crc32.Checksum(src, crc32.MakeTable(crc32.Castagnoli)) || !bytes.Equal(dst, src) {
			t.Errorf("%d bytes: sum %08x, copy equal %v", n, sum, bytes.Equal(dst, src))
		}
	}
}

// A byte changed on disk anywhere in a stream, past the first chunk too, fails its checksum
// when the stream is read; the same file unchanged reads back exactly.
func TestReadStreamRefusesAChangePastTheFirstChunk(t *testing.T) {
	const rows, cols = 256, 300 // a dense stream of 2*rows*cols bytes: more than two chunks
	vals := make([]float32, rows*cols)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range vals {
		vals[i] = float32(r.NormFloat64())
	}
	st, err := EncodeDense(vals, rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) < 2*copySumChunk {
		t.Fatalf("stream of %d bytes is too short for the test", len(st))
	}
	const name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
	m := &Manifest{Format: Format, PEFTConfig: []byte(`{"peft_type":"LORA","r":256,"lora_alpha":16,"target_modules":["q_proj"]}`),
		Tensors: map[string]TensorInfo{name: {Codec: "dense-bf16", Density: 1, Kept: rows * cols, Shape: [2]int{rows, cols}, DType: "BF16", Bytes: len(st)}}}
	var buf bytes.Buffer
	if err := WriteContainer(&buf, m, []Stream{{Name: name, Data: st}}); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	at := bytes.Index(data, st) + copySumChunk + 3
	for _, change := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "a.lorapack")
		file := bytes.Clone(data)
		if change {
			file[at] ^= 0x40
		}
		if err := os.WriteFile(path, file, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(st))
		err = c.ReadStream(name, got)
		c.Close()
		switch {
		case change && !errors.Is(err, ErrCorrupt):
			t.Errorf("changed byte: err %v, want ErrCorrupt", err)
		case !change && (err != nil || !bytes.Equal(got, st)):
			t.Errorf("unchanged file: err %v, equal %v", err, bytes.Equal(got, st))
		}
	}
}
