package tokenizer

import (
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"unicode/utf8"
)

var testNames = []string{"llama3", "qwen3", "llama2"}

type loaded struct {
	tok *Tokenizer
	err error
}

var (
	loadMu    sync.Mutex
	loadCache = map[string]*loaded{}
)

// loadTest loads a real tokenizer once per test binary (llama3's JSON is
// 9 MB; parsing it for every test would dominate the run time).
func loadTest(tb testing.TB, name string) *Tokenizer {
	tb.Helper()
	loadMu.Lock()
	l, ok := loadCache[name]
	if !ok {
		l = &loaded{}
		l.tok, l.err = Load(filepath.Join("..", "testdata", "tokenizers", name))
		loadCache[name] = l
	}
	loadMu.Unlock()
	if l.err != nil {
		tb.Fatalf("load %s: %v", name, l.err)
	}
	return l.tok
}

type goldenCase struct {
	Text               string   `json:"text"`
	IDsSpecial         []int    `json:"ids_special"`
	IDsPlain           []int    `json:"ids_plain"`
	Decoded            string   `json:"decoded"`
	DecodedSkipSpecial string   `json:"decoded_skip_special"`
	Pieces             []string `json:"pieces"`
}

type goldenFile struct {
	Version string       `json:"tokenizers_version"`
	Cases   []goldenCase `json:"cases"`
}

// loadGolden reads testdata/tokenizers/<name>/golden.json.gz (written by
// tools/fixtures/tokenizer_golden.py with HF tokenizers). Missing goldens
// skip the test rather than fail: they are generated on another machine.
func loadGolden(tb testing.TB, name string) *goldenFile {
	tb.Helper()
	path := filepath.Join("..", "testdata", "tokenizers", name, "golden.json.gz")
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		tb.Skipf("no golden file %s (run tools/fixtures/tokenizer_golden.py)", path)
	}
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		tb.Fatal(err)
	}
	var g goldenFile
	if err := json.NewDecoder(zr).Decode(&g); err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	if len(g.Cases) == 0 {
		tb.Fatalf("%s: no cases", path)
	}
	return &g
}

func utf8Valid(s string) bool { return utf8.ValidString(s) }

func validUTF8(s string) bool { return utf8.ValidString(s) }

// loadGoldenIfPresent is loadGolden without skipping: nil when absent.
func loadGoldenIfPresent(name string) *goldenFile {
	f, err := os.Open(filepath.Join("..", "testdata", "tokenizers", name, "golden.json.gz"))
	if err != nil {
		return nil
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil
	}
	var g goldenFile
	if json.NewDecoder(zr).Decode(&g) != nil {
		return nil
	}
	return &g
}
