package openai_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/openai"
)

func TestTokenizeRoundTrip(t *testing.T) {
	e, ct := demoEngine(t)
	srv := newServer(t, e, openai.Options{ChatTemplate: ct})
	for _, text := range []string{"Hello, wörld! 👋", "<|im_start|>user\nhi<|im_end|>", " leading and trailing "} {
		body, _ := json.Marshal(map[string]any{"prompt": text})
		st, b := post(t, srv.URL, "/tokenize", string(body))
		var tk struct {
			Tokens      []int `json:"tokens"`
			Count       int   `json:"count"`
			MaxModelLen int   `json:"max_model_len"`
		}
		if err := json.Unmarshal(b, &tk); err != nil || st != 200 {
			t.Fatalf("tokenize %q: %d %s", text, st, b)
		}
		if tk.Count != len(tk.Tokens) || tk.MaxModelLen != 256 || tk.Count == 0 {
			t.Errorf("tokenize %q: %s", text, b)
		}
		body, _ = json.Marshal(map[string]any{"tokens": tk.Tokens})
		st, b = post(t, srv.URL, "/detokenize", string(body))
		var dt struct{ Prompt string }
		if err := json.Unmarshal(b, &dt); err != nil || st != 200 || dt.Prompt != text {
			t.Errorf("detokenize of %q: %d %s", text, st, b)
		}
	}
	// Special tokens in text are recognised as single tokens.
	st, b := post(t, srv.URL, "/tokenize", `{"prompt":"<|im_end|>"}`)
	if st != 200 || !strings.Contains(string(b), `"tokens":[259]`) {
		t.Errorf("special token: %d %s", st, b)
	}
	st, b = post(t, srv.URL, "/detokenize", `{"tokens":[72,9999]}`)
	checkError(t, st, b, 400, "tokens")
	st, b = post(t, srv.URL, "/detokenize", `{"tokens":"abc"}`)
	checkError(t, st, b, 400, "tokens")
}

// TestTextPromptAndStop uses text prompts, stop strings and skip_special_tokens on the demo model.
func TestTextPromptAndStop(t *testing.T) {
	e, _ := demoEngine(t)
	srv := newServer(t, e, openai.Options{})
	st, b := post(t, srv.URL, "/v1/completions", `{"prompt":"Once upon a time","max_tokens":20,"seed":3,"ignore_eos":true,"return_token_ids":true}`)
	var resp struct {
		Choices []struct {
			Text     string
			TokenIDs []int `json:"token_ids"`
		}
	}
	if err := json.Unmarshal(b, &resp); err != nil || st != 200 || len(resp.Choices[0].TokenIDs) != 20 {
		t.Fatalf("%d %s", st, b)
	}
	// Stop at a character the unstopped text contains: the text must end right before it.
	text := resp.Choices[0].Text
	if text == "" {
		t.Skip("the untrained model produced no visible text for this seed")
	}
	r := []rune(text)
	stop := string(r[len(r)/2])
	body, _ := json.Marshal(map[string]any{"prompt": "Once upon a time", "max_tokens": 20, "seed": 3, "ignore_eos": true, "stop": stop})
	st, b = post(t, srv.URL, "/v1/completions", string(body))
	var stopped struct {
		Choices []struct {
			Text         string
			FinishReason string `json:"finish_reason"`
			StopReason   any    `json:"stop_reason"`
		}
	}
	json.Unmarshal(b, &stopped)
	if st != 200 || stopped.Choices[0].FinishReason != "stop" || stopped.Choices[0].StopReason != stop ||
		!strings.HasPrefix(text, stopped.Choices[0].Text) || strings.Contains(stopped.Choices[0].Text, stop) {
		t.Errorf("stop %q on %q: %d %s", stop, text, st, b)
	}
}

func TestRuntimeAdapters(t *testing.T) {
	e := fixtureEngine(t, "llama")
	srv := newServer(t, e, openai.Options{AllowRuntimeAdapterUpdates: true})
	req := `{"model":"a_qv","prompt":[7],"max_tokens":2,"temperature":0}`
	if st, b := post(t, srv.URL, "/v1/unload_lora_adapter", `{"lora_name":"a_qv"}`); st != 200 {
		t.Fatalf("unload: %d %s", st, b)
	}
	st, b := post(t, srv.URL, "/v1/completions", req)
	checkError(t, st, b, 404, "model")
	st, b = post(t, srv.URL, "/v1/unload_lora_adapter", `{"lora_name":"a_qv"}`)
	checkError(t, st, b, 404, "lora_name")
	path, _ := json.Marshal(filepath.Join(fixtureDir("llama"), "adapters", "a_qv"))
	if st, b := post(t, srv.URL, "/v1/load_lora_adapter", `{"lora_name":"a_qv","lora_path":`+string(path)+`}`); st != 200 || !strings.Contains(string(b), "a_qv") {
		t.Fatalf("load: %d %s", st, b)
	}
	if st, b := post(t, srv.URL, "/v1/completions", req); st != 200 {
		t.Errorf("after reload: %d %s", st, b)
	}
	// Outside the roots is one answer, whether the path exists or not.
	st, b = post(t, srv.URL, "/v1/load_lora_adapter", `{"lora_name":"x","lora_path":"/nonexistent/adapter"}`)
	checkError(t, st, b, 403, "lora_path")
	st, b = post(t, srv.URL, "/v1/load_lora_adapter", `{"lora_name":"x"}`)
	checkError(t, st, b, 400, "")
	// A real adapter folder outside the adapter roots is refused.
	outside, _ := json.Marshal(filepath.Join(fixtureDir("qwen3"), "adapters", "a_qv"))
	st, b = post(t, srv.URL, "/v1/load_lora_adapter", `{"lora_name":"x","lora_path":`+string(outside)+`}`)
	checkError(t, st, b, 403, "lora_path")
}

func TestHealthAndDrain(t *testing.T) {
	e, _ := demoEngine(t)
	srv := newServer(t, e, openai.Options{APIKey: testKey})
	if st, _ := get(t, srv.URL+"/health"); st != 200 { // open even with an API key
		t.Fatalf("health %d", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	st, b := get(t, srv.URL+"/health")
	checkError(t, st, b, 503, "")
	st, b = post(t, srv.URL, "/v1/completions", `{"prompt":"hi"}`, "Authorization", "Bearer "+testKey)
	checkError(t, st, b, 503, "")
}

// TestClientDisconnectCancels reads one chunk of a long stream, hangs up, and checks that the
// engine stops working on the request.
func TestClientDisconnectCancels(t *testing.T) {
	e, _ := demoEngine(t)
	srv := newServer(t, e, openai.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/completions",
		strings.NewReader(`{"prompt":"hi","max_tokens":240,"ignore_eos":true,"stream":true}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "data: {") {
		t.Fatalf("first line %q: %v", line, err)
	}
	cancel()
	resp.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for e.Stats().Running.Load()+e.Stats().Waiting.Load() > 0 || aborted(e.Stats()) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("request still running after the client left (running %d, aborted %d)", e.Stats().Running.Load(), aborted(e.Stats()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := e.Stats().GenerationTokens.Load(); n >= 240 {
		t.Errorf("generated %d tokens; the request was not cancelled", n)
	}
}

// aborted counts requests the engine finished as "abort".
func aborted(s *serve.Stats) int64 {
	v, ok := s.Finished.Load("abort")
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

// TestBatchedPromptsAndN checks choice indexing for several prompts times n.
func TestBatchedPromptsAndN(t *testing.T) {
	e := fixtureEngine(t, "llama")
	srv := newServer(t, e, openai.Options{})
	cases := loadCases(t, "llama")[:2]
	body, _ := json.Marshal(map[string]any{"model": "llama", "prompt": [][]int{cases[0].Prompt, cases[1].Prompt}, "n": 2,
		"max_tokens": 6, "temperature": 0, "ignore_eos": true, "return_token_ids": true})
	st, b := post(t, srv.URL, "/v1/completions", string(body))
	var resp struct {
		Choices []struct {
			Index    int
			TokenIDs []int `json:"token_ids"`
		}
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		}
	}
	if err := json.Unmarshal(b, &resp); err != nil || st != 200 || len(resp.Choices) != 4 {
		t.Fatalf("%d %s", st, b)
	}
	for i, ch := range resp.Choices {
		if ch.Index != i || !slices.Equal(ch.TokenIDs, cases[i/2].Tokens()) {
			t.Errorf("choice %d: index %d tokens %v, want %v", i, ch.Index, ch.TokenIDs, cases[i/2].Tokens())
		}
	}
	if resp.Usage.PromptTokens != len(cases[0].Prompt)+len(cases[1].Prompt) || resp.Usage.CompletionTokens != 24 {
		t.Errorf("usage %+v", resp.Usage)
	}
}

func TestEcho(t *testing.T) {
	e, _ := demoEngine(t)
	srv := newServer(t, e, openai.Options{})
	for _, stream := range []bool{false, true} {
		body, _ := json.Marshal(map[string]any{"prompt": "Echo me", "max_tokens": 3, "seed": 1, "echo": true, "stream": stream})
		st, b := post(t, srv.URL, "/v1/completions", string(body))
		if st != 200 {
			t.Fatalf("stream=%v: %d %s", stream, st, b)
		}
		text := string(b)
		if stream {
			// The first data chunk carries the prompt.
			first := strings.SplitN(strings.TrimPrefix(text, "data: "), "\n\n", 2)[0]
			text = first
		}
		if !strings.Contains(text, `"text":"Echo me`) {
			t.Errorf("stream=%v: prompt not echoed: %s", stream, b)
		}
	}
}

// TestPanicBecomes500 uses a handler without an engine, so every engine call panics; the client
// must still get a JSON 500, and the server must keep serving.
func TestPanicBecomes500(t *testing.T) {
	srv := newServer(t, nil, openai.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	for i := 0; i < 2; i++ {
		st, b := get(t, srv.URL+"/v1/models")
		env := checkError(t, st, b, 500, "")
		if env.Error.Type != "InternalServerError" {
			t.Errorf("type %q", env.Error.Type)
		}
	}
}

func TestChatHostile(t *testing.T) {
	e, ct := demoEngine(t)
	srv := newServer(t, e, openai.Options{ChatTemplate: ct})
	for _, c := range []struct {
		body   string
		status int
		param  string
	}{
		{`{"messages":[]}`, 400, "messages"},
		{`{"messages":[{"content":"x"}]}`, 400, "messages"},
		{`{"messages":[{"role":"user","content":5}]}`, 400, "messages"},
		{`{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`, 400, "messages"},
		{`{"messages":[{"role":"user","content":"x"}],"top_logprobs":50,"logprobs":true}`, 400, "top_logprobs"},
		{`{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":"a"}`, 400, "max_completion_tokens"},
		{`{"messages":[{"role":"user","content":"x"}],"model":"nope"}`, 404, "model"},
		{`{"messages":[{"role":"user","content":"` + strings.Repeat("x", 300) + `"}]}`, 400, "prompt"},
	} {
		st, b := post(t, srv.URL, "/v1/chat/completions", c.body)
		checkError(t, st, b, c.status, c.param)
	}
	// Content parts and max_completion_tokens are accepted.
	st, b := post(t, srv.URL, "/v1/chat/completions", `{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"max_completion_tokens":2}`)
	if st != 200 || !strings.Contains(string(b), `"completion_tokens":2`) {
		t.Errorf("%d %s", st, b)
	}
}

// TestOverloaded fills a one-sequence engine with a one-slot queue: the third request gets 429.
func TestOverloaded(t *testing.T) {
	e, _ := demoEngineWith(t, serve.Options{MaxNumSeqs: 1, MaxBatchedTokens: 64, MaxModelLen: 512, MaxQueued: 1})
	srv := newServer(t, e, openai.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() *http.Response {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/completions",
			strings.NewReader(`{"prompt":"hi","max_tokens":500,"ignore_eos":true,"stream":true}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		return resp
	}
	running := open()
	defer running.Body.Close()
	if _, err := bufio.NewReader(running.Body).ReadString('\n'); err != nil { // admitted and generating
		t.Fatal(err)
	}
	queued := open() // headers come once the engine has accepted it into the queue
	defer queued.Body.Close()
	st, header, body := send(t, "POST", srv.URL, "/v1/completions", `{"prompt":"hi","max_tokens":2}`, "Content-Type", "application/json")
	checkError(t, st, body, 429, "")
	if ra := header.Get("Retry-After"); ra == "" {
		t.Errorf("429 without Retry-After")
	}
}

// A request that can never fit is a 400, not a 429 a client would retry: here n above what
// the queue can ever hold, and prompt + max_tokens above max-model-len, on an idle engine.
func TestNeverFitsIsNotOverload(t *testing.T) {
	e, _ := demoEngineWith(t, serve.Options{MaxNumSeqs: 1, MaxBatchedTokens: 64, MaxModelLen: 64, MaxQueued: 1})
	srv := newServer(t, e, openai.Options{})
	st, body := post(t, srv.URL, "/v1/completions", `{"prompt":"hi","max_tokens":2,"n":2}`)
	checkError(t, st, body, 400, "n")
	st, body = post(t, srv.URL, "/v1/completions", `{"prompt":["hi","ho"],"max_tokens":2}`)
	checkError(t, st, body, 400, "n")
	st, body = post(t, srv.URL, "/v1/completions", `{"prompt":"hi","max_tokens":64}`)
	checkError(t, st, body, 400, "max_tokens")
	if st, body := post(t, srv.URL, "/v1/completions", `{"prompt":"hi","max_tokens":2}`); st != 200 {
		t.Errorf("a request that fits: %d %s", st, body)
	}
}
