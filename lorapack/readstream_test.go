package lorapack

import (
	"bytes"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/model/safetensors"
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

// A file whose manifest is refused leaves FromFile with its mapping still open and readable:
// the caller may be copying streams out of it while the manifest is checked, and unmaps it
// once those copies end.
func TestFromFileLeavesARefusedFileMapped(t *testing.T) {
	st, err := EncodeDense([]float32{1, 2, 3, 4}, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	const name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
	m := &Manifest{Format: Format, PEFTConfig: []byte(`{"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj"]}`),
		Tensors: map[string]TensorInfo{name: {Codec: "dense-bf16", Density: 1, Kept: 4, Shape: [2]int{2, 2}, DType: "BF16", Bytes: len(st)}}}
	var buf bytes.Buffer
	if err := WriteContainer(&buf, m, []Stream{{Name: name, Data: st}}); err != nil {
		t.Fatal(err)
	}
	file := buf.Bytes()
	at := bytes.Index(file, []byte(`dense-bf16`))
	file[at] = 'D' // the manifest no longer matches its checksum
	path := filepath.Join(t.TempDir(), "a.lorapack")
	if err := os.WriteFile(path, file, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := FromFile(f); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged manifest: %v", err)
	}
	tensor, _ := f.Tensor(name)
	got := make([]byte, len(st))
	if _, err := CopyStream(got, tensor.Data); err != nil || !bytes.Equal(got, st) {
		t.Errorf("the mapping after the refusal: err %v, equal %v", err, bytes.Equal(got, st))
	}
}

// A stream copied before the manifest is checked (CopyStream) is held to the manifest's
// checksum after (CheckSum) exactly as ReadStream holds it: its own sum passes, any other
// fails, and so does a name the file does not hold or a copy into the wrong size.
func TestCopyStreamThenCheckSumIsReadStream(t *testing.T) {
	st, err := EncodeDense([]float32{1, 2, 3, 4, 5, 6}, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	const name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
	m := &Manifest{Format: Format, PEFTConfig: []byte(`{"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj"]}`),
		Tensors: map[string]TensorInfo{name: {Codec: "dense-bf16", Density: 1, Kept: 6, Shape: [2]int{2, 3}, DType: "BF16", Bytes: len(st)}}}
	var buf bytes.Buffer
	if err := WriteContainer(&buf, m, []Stream{{Name: name, Data: st}}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "a.lorapack")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tensor, _ := c.File.Tensor(name)
	got := make([]byte, len(st))
	sum, err := CopyStream(got, tensor.Data)
	if err != nil || !bytes.Equal(got, st) || sum != Checksum(st) {
		t.Fatalf("copy: err %v, equal %v, sum %08x want %08x", err, bytes.Equal(got, st), sum, Checksum(st))
	}
	if err := c.CheckSum(name, sum); err != nil {
		t.Errorf("its own sum: %v", err)
	}
	if err := c.CheckSum(name, sum^1); !errors.Is(err, ErrCorrupt) {
		t.Errorf("another sum: %v", err)
	}
	if err := c.CheckSum("nope", sum); err == nil {
		t.Error("a name the file does not hold passed")
	}
	if _, err := CopyStream(make([]byte, len(st)-1), tensor.Data); err == nil {
		t.Error("a copy into the wrong size passed")
	}
}
