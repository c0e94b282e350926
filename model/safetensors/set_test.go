package safetensors

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func u8(name string, b ...byte) Tensor {
	return Tensor{Name: name, DType: "U8", Shape: []int{len(b)}, Data: b}
}

func writeIndex(t *testing.T, dir, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, IndexFile), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, path string, ts ...Tensor) {
	t.Helper()
	if err := WriteFile(path, ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
}

func TestOpenDirSingle(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, filepath.Join(dir, SingleFile), u8("b", 2), u8("a", 1))
	s, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !reflect.DeepEqual(s.Names(), []string{"a", "b"}) {
		t.Errorf("Names = %v", s.Names())
	}
	if tt, ok := s.Tensor("b"); !ok || tt.Data[0] != 2 {
		t.Errorf("Tensor(b) = %+v %v", tt, ok)
	}
	if s.Where("a") != filepath.Join(dir, SingleFile) || s.Where("zz") != "" {
		t.Errorf("Where: %q %q", s.Where("a"), s.Where("zz"))
	}
}

func TestOpenDirSharded(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, filepath.Join(dir, "s-1.safetensors"), u8("a", 1), u8("b", 2))
	mustWrite(t, filepath.Join(dir, "s-2.safetensors"), u8("c", 3))
	writeIndex(t, dir, `{"metadata":{"total_size":3},"weight_map":{"a":"s-1.safetensors","b":"s-1.safetensors","c":"s-2.safetensors"}}`)
	s, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !reflect.DeepEqual(s.Names(), []string{"a", "b", "c"}) {
		t.Errorf("Names = %v", s.Names())
	}
	if tt, ok := s.Tensor("c"); !ok || tt.Data[0] != 3 {
		t.Errorf("Tensor(c) = %+v %v", tt, ok)
	}
	if got := s.Where("c"); got != filepath.Join(dir, "s-2.safetensors") {
		t.Errorf("Where(c) = %q", got)
	}
	if _, ok := s.Tensor("zz"); ok {
		t.Error("found a tensor that does not exist")
	}
}

func TestOpenDirErrors(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(t *testing.T, dir string)
		tensor string
		msg    string
	}{
		{"no weights", func(t *testing.T, dir string) {}, "", ""},
		{"index not json", func(t *testing.T, dir string) { writeIndex(t, dir, `{`) }, "", "not valid JSON"},
		{"empty weight map", func(t *testing.T, dir string) { writeIndex(t, dir, `{"weight_map":{}}`) }, "", "missing or empty"},
		{"shard outside dir", func(t *testing.T, dir string) { writeIndex(t, dir, `{"weight_map":{"a":"../x.safetensors"}}`) }, "a", "not a file name"},
		{"missing shard", func(t *testing.T, dir string) {
			mustWrite(t, filepath.Join(dir, "s-1.safetensors"), u8("a", 1))
			writeIndex(t, dir, `{"weight_map":{"a":"s-1.safetensors","b":"s-2.safetensors"}}`)
		}, "", "shard s-2.safetensors is missing"},
		{"tensor missing from shard", func(t *testing.T, dir string) {
			mustWrite(t, filepath.Join(dir, "s-1.safetensors"), u8("a", 1))
			writeIndex(t, dir, `{"weight_map":{"a":"s-1.safetensors","b":"s-1.safetensors"}}`)
		}, "b", "missing from the shard"},
		{"duplicate across shards", func(t *testing.T, dir string) {
			mustWrite(t, filepath.Join(dir, "s-1.safetensors"), u8("a", 1))
			mustWrite(t, filepath.Join(dir, "s-2.safetensors"), u8("a", 1), u8("b", 2))
			writeIndex(t, dir, `{"weight_map":{"a":"s-1.safetensors","b":"s-2.safetensors"}}`)
		}, "a", "duplicate across shards"},
		{"unlisted tensor", func(t *testing.T, dir string) {
			mustWrite(t, filepath.Join(dir, "s-1.safetensors"), u8("a", 1), u8("z", 1))
			writeIndex(t, dir, `{"weight_map":{"a":"s-1.safetensors"}}`)
		}, "z", "not listed"},
		{"bad shard", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "s-1.safetensors"), raw(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}`, []byte{1}), 0o644)
			writeIndex(t, dir, `{"weight_map":{"a":"s-1.safetensors"}}`)
		}, "a", "run past"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			s, err := OpenDir(dir)
			if err == nil {
				s.Close()
				t.Fatal("OpenDir succeeded")
			}
			if tc.msg == "" {
				if !errors.Is(err, os.ErrNotExist) {
					t.Errorf("got %v, want a not-exist error", err)
				}
				return
			}
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Tensor != tc.tensor || !strings.Contains(fe.Msg, tc.msg) {
				t.Errorf("got %v, want tensor %q and message containing %q", err, tc.tensor, tc.msg)
			}
		})
	}
}
