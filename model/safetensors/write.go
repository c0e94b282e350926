package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
)

// Write writes tensors (in name order, data back to back) and metadata as a safetensors file.
// Like the reference writer it pads the header with spaces to a multiple of 8 bytes, so that
// the data buffer starts 8-byte aligned in the file (and in a mapping of it). It checks each
// tensor's byte length against its shape and dtype, so a test cannot write a file that Parse
// would reject by accident; tests that need broken files edit the bytes afterwards.
func Write(w io.Writer, tensors []Tensor, metadata map[string]string) error {
	sorted := slices.Clone(tensors)
	slices.SortFunc(sorted, func(a, b Tensor) int { return strings.Compare(a.Name, b.Name) })
	var hdr bytes.Buffer
	hdr.WriteByte('{')
	if metadata != nil {
		md, err := json.Marshal(metadata) // map keys come out sorted
		if err != nil {
			return err
		}
		hdr.WriteString(`"` + metadataKey + `":`)
		hdr.Write(md)
	}
	var offset uint64
	for i, t := range sorted {
		if t.Name == metadataKey {
			return fmt.Errorf("safetensors: tensor name %q is reserved", t.Name)
		}
		if i > 0 && sorted[i-1].Name == t.Name {
			return fmt.Errorf("safetensors: tensor %q given twice", t.Name)
		}
		bits, ok := dtypeBits[t.DType]
		if !ok {
			return fmt.Errorf("safetensors: tensor %q: unknown dtype %q", t.Name, t.DType)
		}
		elems := uint64(1)
		for _, d := range t.Shape {
			if d < 0 {
				return fmt.Errorf("safetensors: tensor %q: negative dimension in %v", t.Name, t.Shape)
			}
			if d > 0 && elems > (math.MaxUint64/64)/uint64(d) {
				return fmt.Errorf("safetensors: tensor %q: element count of %v overflows", t.Name, t.Shape)
			}
			elems *= uint64(d)
		}
		if elems*uint64(bits) != uint64(len(t.Data))*8 {
			return fmt.Errorf("safetensors: tensor %q: shape %v of %s needs %d bits, data has %d bytes", t.Name, t.Shape, t.DType, elems*uint64(bits), len(t.Data))
		}
		name, _ := json.Marshal(t.Name)
		shape := t.Shape
		if shape == nil {
			shape = []int{} // a scalar: "shape": [] rather than null
		}
		entry, _ := json.Marshal(struct {
			DType   string    `json:"dtype"`
			Shape   []int     `json:"shape"`
			Offsets [2]uint64 `json:"data_offsets"`
		}{t.DType, shape, [2]uint64{offset, offset + uint64(len(t.Data))}})
		if hdr.Len() > 1 {
			hdr.WriteByte(',')
		}
		hdr.Write(name)
		hdr.WriteByte(':')
		hdr.Write(entry)
		offset += uint64(len(t.Data))
	}
	hdr.WriteByte('}')
	for hdr.Len()%8 != 0 {
		hdr.WriteByte(' ')
	}
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(hdr.Len()))
	if _, err := w.Write(n[:]); err != nil {
		return err
	}
	if _, err := w.Write(hdr.Bytes()); err != nil {
		return err
	}
	for _, t := range sorted {
		if _, err := w.Write(t.Data); err != nil {
			return err
		}
	}
	return nil
}

// WriteFile writes a safetensors file at path (see Write).
func WriteFile(path string, tensors []Tensor, metadata map[string]string) error {
	var buf bytes.Buffer
	if err := Write(&buf, tensors, metadata); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}
