package lorapack

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/loraplex/loraplex/model/safetensors"
)

// A loader's tensors (DecodeTensors) are the tensors of the decoded file (DecodeFile, parsed):
// the same names, dtypes, shapes and values, F32 factors kept F32; a tensor skip accepts keeps
// its place and is left zero.
func TestDecodeTensorsIsTheDecodedFile(t *testing.T) {
	const rows, cols = 16, 96
	r := rand.New(rand.NewPCG(5, 6))
	vals := func() []float32 {
		v := make([]float32, rows*cols)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	const a, b = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
	dense, err := EncodeDense(vals(), rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	q4, err := EncodeQuant(Q4, vals(), rows, cols, DefaultGroup)
	if err != nil {
		t.Fatal(err)
	}
	m := &Manifest{Format: Format, PEFTConfig: []byte(`{"peft_type":"LORA","r":16,"lora_alpha":16,"target_modules":["q_proj"]}`),
		Tensors: map[string]TensorInfo{
			a: {Codec: "dense-bf16", Density: 1, Kept: rows * cols, Shape: [2]int{rows, cols}, DType: "F32", Bytes: len(dense)},
			b: {Codec: "q4", Density: 1, Kept: rows * cols, Shape: [2]int{rows, cols}, DType: "BF16", Bytes: len(q4), Group: DefaultGroup},
		}}
	var file bytes.Buffer
	if err := WriteContainer(&file, m, []Stream{{Name: a, Data: dense}, {Name: b, Data: q4}}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "a.lorapack")
	if err := os.WriteFile(path, file.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf, err := c.DecodeFile(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	want, err := safetensors.Parse(path, buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, skipB := range []bool{false, true} {
		got, err := c.DecodeTensors(path, 1<<20, func(n string, _ TensorInfo) bool { return skipB && n == b }, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Names(), want.Names()) || !reflect.DeepEqual(got.Metadata(), want.Metadata()) {
			t.Fatalf("names %v metadata %v, decoded file %v %v", got.Names(), got.Metadata(), want.Names(), want.Metadata())
		}
		for _, n := range want.Names() {
			w, _ := want.Tensor(n)
			g, _ := got.Tensor(n)
			wantData := w.Data
			if skipB && n == b {
				wantData = make([]byte, len(w.Data))
			}
			if g.DType != w.DType || !reflect.DeepEqual(g.Shape, w.Shape) || !bytes.Equal(g.Data, wantData) {
				t.Errorf("skip %v, %s: %s %v, decoded file %s %v, values equal %v", skipB, n, g.DType, g.Shape, w.DType, w.Shape, bytes.Equal(g.Data, wantData))
			}
		}
	}
	if _, err := c.DecodeTensors(path, 2*rows*cols-1, nil, nil); err == nil {
		t.Error("DecodeTensors decoded more values than maxElems allows")
	}
}
