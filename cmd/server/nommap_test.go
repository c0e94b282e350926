package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// --no-mmap copies the base model out of its files at startup (the log says so), so the
// server no longer reads them: with every weights file truncated under the running server it
// goes on answering, with the same tokens as before. (A mapped model's backend stops instead:
// serve/grpcapi's TestWeightsTruncatedUnderServer.)
func TestNoMmapServesFromACopy(t *testing.T) {
	src := filepath.Join("..", "..", "testdata", "models", "llama")
	dir := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	url, logs, stop := start(t, "--model", dir, "--served-model-name", "tiny", "--device", "cpu", "--no-mmap", "--max-num-seqs", "2",
		"--no-enable-prefix-caching")
	defer stop()
	if !strings.Contains(logs.String(), "weights copied out of the file mapping (--no-mmap)") {
		t.Fatalf("the startup log does not say the weights were copied:\n%s", logs)
	}
	client := oai.NewClient(option.WithBaseURL(url+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	complete := func() string {
		t.Helper()
		resp, err := client.Completions.New(context.Background(), oai.CompletionNewParams{
			Model: "tiny", Prompt: oai.CompletionNewParamsPromptUnion{OfArrayOfTokens: []int64{5, 17, 42, 9, 3}},
			MaxTokens: oai.Int(8), Temperature: oai.Float(0),
		}, option.WithJSONSet("ignore_eos", true), option.WithJSONSet("return_tokens_as_token_ids", true), option.WithJSONSet("logprobs", 1))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(resp.Choices[0].Logprobs.Tokens, " ")
	}
	before := complete()
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if len(files) == 0 {
		t.Fatal("no weights files")
	}
	for _, f := range files {
		if err := os.Truncate(f, 0); err != nil {
			t.Fatal(err)
		}
	}
	if after := complete(); after != before || before == "" {
		t.Fatalf("with the files truncated: tokens %q, before %q", after, before)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
