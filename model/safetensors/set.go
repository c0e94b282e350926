package safetensors

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Names of a Hugging Face model folder's weight files.
const (
	SingleFile = "model.safetensors"
	IndexFile  = "model.safetensors.index.json"
)

// Set is a model's weights: one file, or the shards named by an index. Tensor names are
// unique across the set.
type Set struct {
	files []*File
	where map[string]*File
	names []string // sorted
}

// OpenDir opens dir/model.safetensors.index.json and every shard it names, or, without an
// index, dir/model.safetensors. With an index, every tensor it lists must be in the shard it
// names, and no tensor may appear in two shards or in a shard without being listed.
func OpenDir(dir string) (*Set, error) {
	indexPath := filepath.Join(dir, IndexFile)
	raw, err := os.ReadFile(indexPath)
	if errors.Is(err, fs.ErrNotExist) {
		f, err := Open(filepath.Join(dir, SingleFile))
		if err != nil {
			return nil, err
		}
		s := &Set{files: []*File{f}, where: map[string]*File{}, names: f.Names()}
		for _, n := range f.Names() {
			s.where[n] = f
		}
		return s, nil
	}
	if err != nil {
		return nil, err
	}
	var index struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &index); err != nil {
		return nil, formatErr(indexPath, "", "index is not valid JSON: %v", err)
	}
	if len(index.WeightMap) == 0 {
		return nil, formatErr(indexPath, "", "weight_map is missing or empty")
	}
	s := &Set{where: map[string]*File{}}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	// Open each shard once, in a stable order, so errors are reproducible.
	shards := map[string]*File{}
	var shardNames []string
	for tensor, shard := range index.WeightMap {
		// A shard must be a file in dir: the index must not reach elsewhere on disk.
		if shard == "" || shard != filepath.Base(shard) || shard == "." || shard == ".." || strings.ContainsAny(shard, `/\`) {
			return nil, formatErr(indexPath, tensor, "shard %q is not a file name in the model folder", shard)
		}
		if _, seen := shards[shard]; !seen {
			shards[shard] = nil
			shardNames = append(shardNames, shard)
		}
	}
	slices.Sort(shardNames)
	for _, shard := range shardNames {
		f, err := Open(filepath.Join(dir, shard))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, formatErr(indexPath, "", "shard %s is missing", shard)
		}
		if err != nil {
			return nil, err
		}
		shards[shard] = f
		s.files = append(s.files, f)
	}
	listed := make([]string, 0, len(index.WeightMap))
	for tensor := range index.WeightMap {
		listed = append(listed, tensor)
	}
	slices.Sort(listed)
	for _, tensor := range listed {
		f := shards[index.WeightMap[tensor]]
		if _, ok := f.tensors[tensor]; !ok {
			return nil, formatErr(f.path, tensor, "listed in %s but missing from the shard", IndexFile)
		}
		s.where[tensor] = f
	}
	for _, f := range s.files {
		for _, n := range f.Names() {
			if s.where[n] != f {
				if other, listed := s.where[n]; listed {
					return nil, formatErr(f.path, n, "also present in %s (duplicate across shards)", other.path)
				}
				return nil, formatErr(f.path, n, "present in the shard but not listed in %s", IndexFile)
			}
		}
	}
	s.names = listed
	ok = true
	return s, nil
}

// Names returns all tensor names in sorted order. The slice must not be modified.
func (s *Set) Names() []string { return s.names }

// Tensor returns the named tensor from whichever file holds it.
func (s *Set) Tensor(name string) (Tensor, bool) {
	f, ok := s.where[name]
	if !ok {
		return Tensor{}, false
	}
	return f.Tensor(name)
}

// Where returns the path of the file holding name ("" if none), for error messages.
func (s *Set) Where(name string) string {
	if f, ok := s.where[name]; ok {
		return f.path
	}
	return ""
}

// Close unmaps every file; it returns the first error.
func (s *Set) Close() error {
	var first error
	for _, f := range s.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
