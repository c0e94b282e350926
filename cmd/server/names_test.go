package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
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

// --help describes each feature with an example that runs: every curl line of it, sent to the
// demo server, answers 200.
func TestHelpExamplesRun(t *testing.T) {
	var help strings.Builder
	if err := run(context.Background(), []string{"--help"}, &help); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"/v1/models/", "/version", "logit_bias", "echo", "max_tokens\":0", "prompt_logprobs", ".lorapack", "--served-model-name", "-adapter-dir", "tool_choice", "-tool-call-parser"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("--help does not mention %s", want)
		}
	}
	url, _, stop := start(t, "--device", "cpu")
	defer stop()
	examples := curlRE.FindAllStringSubmatch(help.String(), -1)
	if len(examples) < 8 {
		t.Fatalf("%d examples in --help", len(examples))
	}
	for _, ex := range examples {
		path, body := ex[1], ex[2]
		var resp *http.Response
		var err error
		if body == "" {
			resp, err = http.Get(url + path)
		} else {
			// The shell would turn the body's \n into a JSON escape as written: send it as is.
			resp, err = http.Post(url+path, "application/json", strings.NewReader(body))
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s %s: %d %s", path, body, resp.StatusCode, b)
		}
	}
}

// curlRE finds --help's examples: the path, and the body of a POST (on the next line).
var curlRE = regexp.MustCompile(`curl -s localhost:8000(\S+)(?: -H 'content-type: application/json' \\\n\s+-d '([^']*)')?`)
