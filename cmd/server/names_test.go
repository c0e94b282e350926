package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/internal/fixture"
)

// As in vLLM, the base model answers to the --model argument exactly as given when no
// --served-model-name is set; and a lorapack file NAME.lorapack in an --adapter-dir answers to
// NAME (and still to its file name).
func TestServedNameAndLorapackNames(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "models", "llama")
	adapters := t.TempDir()
	f, err := os.Create(filepath.Join(adapters, "sql.lorapack"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adaptercache.CompressPEFT(fixture.AdapterDir("llama", "a_qv"), f, adaptercache.DefaultCompressOptions()); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	url, _, stop := start(t, "--model", dir, "--device", "cpu", "--max-model-len", "64", "--adapter-dir", adapters)
	defer stop()
	resp, err := http.Get(url + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list.Data) == 0 || list.Data[0].ID != dir {
		t.Fatalf("models %+v, want the base model named %q", list.Data, dir)
	}
	for _, model := range []string{dir, "sql", "sql.lorapack"} {
		body, _ := json.Marshal(map[string]any{"model": model, "prompt": []int{1, 2, 3}, "max_tokens": 2})
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"model":`+string(mustJSON(model))) {
			t.Errorf("model %q: %d %s", model, resp.StatusCode, b)
		}
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
