package safetensors

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// Tensors laid out in memory give the File that writing them and parsing the bytes gives: same
// names, dtypes, shapes, data and metadata.
func TestFromTensorsIsTheParsedFile(t *testing.T) {
	md := map[string]string{"format": "pt"}
	var buf bytes.Buffer
	if err := Write(&buf, sampleTensors(), md); err != nil {
		t.Fatal(err)
	}
	parsed, err := Parse("x", buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	built, err := FromTensors("x", sampleTensors(), md)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(built.Names(), parsed.Names()) || !reflect.DeepEqual(built.Metadata(), parsed.Metadata()) {
		t.Fatalf("names %v metadata %v, parsed %v %v", built.Names(), built.Metadata(), parsed.Names(), parsed.Metadata())
	}
	for _, n := range parsed.Names() {
		want, _ := parsed.Tensor(n)
		got, _ := built.Tensor(n)
		if got.DType != want.DType || !reflect.DeepEqual(got.Shape, want.Shape) || !bytes.Equal(got.Data, want.Data) {
			t.Errorf("%s: %s %v %d bytes, parsed %s %v %d bytes", n, got.DType, got.Shape, len(got.Data), want.DType, want.Shape, len(want.Data))
		}
	}
}

// A tensor laid out in memory is refused for what Parse refuses in a header entry, naming the
// tensor: an unknown dtype, a negative dimension, an element count that wraps, bytes that are
// not what the shape needs or sub-byte elements that do not fill them; so are a name given
// twice, the reserved metadata name and a name that is not UTF-8.
func TestFromTensorsRefusesWhatParseRefuses(t *testing.T) {
	for _, c := range []struct {
		t    Tensor
		want string
	}{
		{Tensor{Name: "x", DType: "F31", Shape: []int{2}, Data: make([]byte, 8)}, "unknown dtype"},
		{Tensor{Name: "x", DType: "BF16", Shape: []int{-2, -2}, Data: make([]byte, 8)}, "non-negative"},
		{Tensor{Name: "x", DType: "F32", Shape: []int{1 << 32, 1 << 32, 4}, Data: make([]byte, 4)}, "overflows"},
		{Tensor{Name: "x", DType: "BF16", Shape: []int{2, 3}, Data: make([]byte, 10)}, "needs 12 bytes"},
		{Tensor{Name: "x", DType: "F4", Shape: []int{3}, Data: make([]byte, 2)}, "whole bytes"},
		{Tensor{Name: "a.bias", DType: "U8", Shape: []int{1}, Data: make([]byte, 1)}, "listed twice"},
		{Tensor{Name: metadataKey, DType: "U8", Shape: []int{1}, Data: make([]byte, 1)}, "reserved"},
		{Tensor{Name: "x\xff", DType: "U8", Shape: []int{1}, Data: make([]byte, 1)}, "UTF-8"},
	} {
		_, err := FromTensors("x", append(sampleTensors(), c.t), nil)
		var fe *FormatError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err %v, want a *FormatError saying %q", c.t, err, c.want)
			continue
		}
		if c.want != "UTF-8" && fe.Tensor != c.t.Name {
			t.Errorf("%+v: error names tensor %q", c.t, fe.Tensor)
		}
	}
}
