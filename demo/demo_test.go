package demo_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// generate builds the demo model from scratch and decodes greedily from a fixed prompt.
func generate(t *testing.T) []int {
	t.Helper()
	b := cpu.New(2)
	defer b.Close()
	cfg, w, tok, tmpl, err := demo.Build(b)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.VocabSize != tok.VocabSize() {
		t.Fatalf("model vocab %d != tokenizer vocab %d", cfg.VocabSize, tok.VocabSize())
	}
	ct, err := chat.Parse(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	text, err := ct.Render([]chat.Message{{Role: "user", Content: "hi"}}, chat.Options{AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"; text != want {
		t.Fatalf("chat template rendered %q, want %q", text, want)
	}
	prompt, err := tok.Encode(text, true)
	if err != nil {
		t.Fatal(err)
	}
	e, err := serve.NewEngine(cfg, b, w, tok, serve.Options{ModelName: demo.Name, MaxModelLen: 256, MaxNumSeqs: 2, MaxBatchedTokens: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := e.Generate(ctx, serve.Request{Prompt: prompt, Params: serve.SamplingParams{MaxTokens: 8, IgnoreEOS: true}})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := s.Collect(ctx)
	if err != nil || ev.Err != nil {
		t.Fatal(err, ev.Err)
	}
	if len(ev.Tokens) != 8 {
		t.Fatalf("got %d tokens, want 8", len(ev.Tokens))
	}
	return ev.Tokens
}

func TestBuildIsDeterministic(t *testing.T) {
	a, b := generate(t), generate(t)
	if !slices.Equal(a, b) {
		t.Fatalf("two builds disagree: %v vs %v", a, b)
	}
	// Random weights should still not collapse onto a single token.
	if slices.Min(a) == slices.Max(a) {
		t.Logf("greedy output repeats one token: %v", a)
	}
}

// BenchmarkBuild measures how long the demo model takes to generate (server start-up cost);
// speed is a benchmark's business, not a test's.
func BenchmarkBuild(b *testing.B) {
	be := cpu.New(2)
	defer be.Close()
	for b.Loop() {
		if _, w, _, _, err := demo.Build(be); err != nil {
			b.Fatal(err)
		} else {
			w.Close()
		}
	}
}
