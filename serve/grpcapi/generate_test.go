package grpcapi_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

func tokenPrompt(ids ...int) *loraplexv1.GenerateRequest_TokenIds {
	v := make([]int32, len(ids))
	for i, x := range ids {
		v[i] = int32(x)
	}
	return &loraplexv1.GenerateRequest_TokenIds{TokenIds: &loraplexv1.TokenIds{Ids: v}}
}

// TestGenerateMatchesReference streams greedy generations for the base model and two adapters
// (run at once, so they share batches) and checks the ids transformers + peft produced.
func TestGenerateMatchesReference(t *testing.T) {
	e := fixtureEngine(t, "llama", serve.Options{})
	ts := startServer(t, e, grpcapi.Options{})
	ctx := ctxTimeout(t, 15*time.Second)
	var cases []fixtureCase
	for _, c := range loadCases(t, "llama") {
		if (c.Adapter == "" || c.Adapter == "a_qv" || c.Adapter == "b_all_rslora") && len(c.Prompt) > 1 {
			cases = append(cases, c)
		}
	}
	errs := make(chan error, len(cases))
	for _, c := range cases {
		go func() {
			errs <- func() error {
				model := c.Adapter
				if model == "" {
					model = "llama" // the base model by name; "" is covered by the cancel test
				}
				st, err := ts.client.Generate(ctx, &loraplexv1.GenerateRequest{Model: model, Prompt: tokenPrompt(c.Prompt...),
					Params: &loraplexv1.SamplingParams{MaxTokens: int32(len(c.Steps)), IgnoreEos: true}})
				if err != nil {
					return err
				}
				got, _, last, err := collect(t, st)
				if err != nil {
					return fmt.Errorf("model %q: %v", model, err)
				}
				want := make([]int32, len(c.Steps))
				for i, s := range c.Steps {
					want[i] = int32(s.Token)
				}
				if !slices.Equal(got, want) {
					return fmt.Errorf("model %q prompt %v: tokens %v, want %v", model, c.Prompt, got, want)
				}
				if last.GetFinishReason() != "length" || last.GetUsage().GetPromptTokens() != int32(len(c.Prompt)) || last.GetUsage().GetCompletionTokens() != int32(len(want)) {
					return fmt.Errorf("model %q: last response %v", model, last)
				}
				return nil
			}()
		}()
	}
	for range cases {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// longLen and long make a generation that takes seconds on the fixture model (about 1 ms a
// token), far longer than the tests that cancel it wait.
const longLen = 2048

var long = &loraplexv1.SamplingParams{MaxTokens: longLen - 8, MinTokens: longLen - 8, IgnoreEos: true}

// TestGenerateCancelFreesEngine cancels the client's context after the first response: the
// server's handler must end with Canceled and the engine must drop the request.
func TestGenerateCancelFreesEngine(t *testing.T) {
	e := fixtureEngine(t, "llama", serve.Options{MaxModelLen: longLen})
	ts := startServer(t, e, grpcapi.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := ts.client.Generate(ctx, &loraplexv1.GenerateRequest{Prompt: tokenPrompt(1, 2, 3), Params: long})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	// Stats are published after the step that streamed the token, so wait rather than read.
	waitFor(t, "the request to show as running", func() bool { return e.Stats().Running.Load() == 1 })
	cancel()
	if _, _, _, err := collect(t, st); status.Code(err) != codes.Canceled {
		t.Fatalf("client after cancel: %v", err)
	}
	waitFor(t, "the engine to drop the cancelled request", func() bool {
		return e.Stats().Running.Load() == 0 && e.Stats().KVPagesUsed.Load() == 0
	})
	waitFor(t, "the handler to return", func() bool { return ts.lastError("Generate") != nil })
	if c := status.Code(ts.lastError("Generate")); c != codes.Canceled {
		t.Fatalf("server handler returned %v, want Canceled", ts.lastError("Generate"))
	}
	if n := finished(e, "abort"); n != 1 {
		t.Fatalf("engine finished %d requests as abort, want 1", n)
	}
}

func finished(e *serve.Engine, reason string) int64 {
	v, ok := e.Stats().Finished.Load(reason)
	if !ok {
		return 0
	}
	return v.(interface{ Load() int64 }).Load()
}

// TestGenerateDeadline: a client deadline that passes mid-generation aborts the engine request.
// The server's context ends by its own timer (DeadlineExceeded) or by the client's reset
// (Canceled), whichever comes first; either way the handler must map it and free the request.
func TestGenerateDeadline(t *testing.T) {
	e := fixtureEngine(t, "llama", serve.Options{MaxModelLen: longLen})
	ts := startServer(t, e, grpcapi.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	st, err := ts.client.Generate(ctx, &loraplexv1.GenerateRequest{Prompt: tokenPrompt(1, 2, 3), Params: long})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := collect(t, st); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("client: %v", err)
	}
	waitFor(t, "the handler to return", func() bool { return ts.lastError("Generate") != nil })
	if c := status.Code(ts.lastError("Generate")); c != codes.DeadlineExceeded && c != codes.Canceled {
		t.Fatalf("server handler returned %v, want DeadlineExceeded or Canceled", ts.lastError("Generate"))
	}
	waitFor(t, "the engine to drop the request", func() bool { return e.Stats().Running.Load() == 0 })
}

// TestGenerateTextChatAndTokenize uses the demo model (tokenizer + chat template): a text
// prompt generates what its Tokenize ids generate, the streamed text equals Detokenize of the
// streamed ids, chat messages render through the template, and stop strings and logprobs
// come back in the last response.
func TestGenerateTextChatAndTokenize(t *testing.T) {
	e, tmpl := demoEngine(t)
	ts := startServer(t, e, grpcapi.Options{ChatTemplate: tmpl})
	ctx := ctxTimeout(t, 15*time.Second)
	params := &loraplexv1.SamplingParams{MaxTokens: 12, IgnoreEos: true, Logprobs: 2}

	tk, err := ts.client.Tokenize(ctx, &loraplexv1.TokenizeRequest{Input: &loraplexv1.TokenizeRequest_Text{Text: "Hello there"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(tk.GetTokenIds()) == 0 || tk.GetMaxModelLen() != 256 {
		t.Fatalf("tokenize: %v", tk)
	}
	byText, err := ts.client.Generate(ctx, &loraplexv1.GenerateRequest{Prompt: &loraplexv1.GenerateRequest_Text{Text: "Hello there"}, Params: params})
	if err != nil {
		t.Fatal(err)
	}
	ids, text, last, err := collect(t, byText)
	if err != nil {
		t.Fatal(err)
	}
	byIDs, err := ts.client.Generate(ctx, &loraplexv1.GenerateRequest{Prompt: &loraplexv1.GenerateRequest_TokenIds{TokenIds: &loraplexv1.TokenIds{Ids: tk.GetTokenIds()}}, Params: params})
	if err != nil {
		t.Fatal(err)
	}
	ids2, text2, _, err := collect(t, byIDs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, ids2) || text != text2 || len(ids) != 12 {
		t.Fatalf("text prompt gave %v %q; its token ids gave %v %q", ids, text, ids2, text2)
	}
	if last.GetUsage().GetPromptTokens() != int32(len(tk.GetTokenIds())) || last.GetFinishReason() != "length" {
		t.Fatalf("last response %v", last)
	}
	dt, err := ts.client.Detokenize(ctx, &loraplexv1.DetokenizeRequest{TokenIds: ids, SkipSpecialTokens: true})
	if err != nil || dt.GetText() != text {
		t.Fatalf("detokenize %q (%v), streamed text %q", dt.GetText(), err, text)
	}
	_, err = ts.client.Detokenize(ctx, &loraplexv1.DetokenizeRequest{TokenIds: []int32{1 << 30}})
	wantCode(t, "detokenize out of vocabulary", err, codes.InvalidArgument)

	// Logprobs: one entry per token, each with the two best alternatives.
	st, err := ts.client.Generate(ctx, &loraplexv1.GenerateRequest{Prompt: &loraplexv1.GenerateRequest_Text{Text: "Hello there"}, Params: params})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		r, err := st.Recv()
		if err != nil {
			break
		}
		if len(r.GetLogprobs()) != len(r.GetTokenIds()) {
			t.Fatalf("%d logprobs for %d tokens", len(r.GetLogprobs()), len(r.GetTokenIds()))
		}
		for i, lp := range r.GetLogprobs() {
			if lp.GetChosen().GetTokenId() != r.GetTokenIds()[i] || len(lp.GetTop()) != 2 || lp.GetChosen().GetLogprob() > 0 {
				t.Fatalf("logprobs %v for token %d", lp, r.GetTokenIds()[i])
			}
		}
		n += len(r.GetTokenIds())
	}
	if n != 12 {
		t.Fatalf("%d tokens with logprobs", n)
	}

	// A stop string taken from the free-running text ends the generation before it.
	// Cut on rune boundaries: the demo model's text is not all ASCII.
	if r := []rune(text); len(r) >= 4 {
		stop := string(r[2:4])
		pre := text[:strings.Index(text, stop)] // it may occur before rune 2 as well
		st, err := ts.client.Generate(ctx, &loraplexv1.GenerateRequest{Prompt: &loraplexv1.GenerateRequest_Text{Text: "Hello there"},
			Params: &loraplexv1.SamplingParams{MaxTokens: 12, IgnoreEos: true, Stop: []string{stop}}})
		if err != nil {
			t.Fatal(err)
		}
		_, got, last, err := collect(t, st)
		if err != nil || last.GetFinishReason() != "stop" || last.GetStopString() != stop || got != pre {
			t.Fatalf("stop %q: text %q last %v err %v; free text %q", stop, got, last, err, text)
		}
	}

	// Chat messages render through the template; Tokenize of the same messages gives the prompt.
	chatPrompt := &loraplexv1.ChatPrompt{Messages: []*loraplexv1.ChatMessage{{Role: "user", Content: "Hi!"}}}
	ct, err := ts.client.Tokenize(ctx, &loraplexv1.TokenizeRequest{Input: &loraplexv1.TokenizeRequest_Messages{Messages: chatPrompt}})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := ts.client.Generate(ctx, &loraplexv1.GenerateRequest{Prompt: &loraplexv1.GenerateRequest_Messages{Messages: chatPrompt}, Params: &loraplexv1.SamplingParams{MaxTokens: 3, IgnoreEos: true}})
	if err != nil {
		t.Fatal(err)
	}
	_, _, last, err = collect(t, cs)
	if err != nil || last.GetUsage().GetPromptTokens() != int32(len(ct.GetTokenIds())) || len(ct.GetTokenIds()) <= len(tk.GetTokenIds()) {
		t.Fatalf("chat: last %v err %v; tokenized chat %d ids", last, err, len(ct.GetTokenIds()))
	}
	// And that prompt is the template's rendering, encoded without extra special tokens.
	rendered, err := tmpl.Render([]chat.Message{{Role: "user", Content: "Hi!"}}, chat.Options{AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	want, err := e.Tokenizer().Encode(rendered, false)
	if err != nil || fmt.Sprint(want) != fmt.Sprint(ct.GetTokenIds()) {
		t.Fatalf("tokenized chat %v, want %v (%v)", ct.GetTokenIds(), want, err)
	}
}
