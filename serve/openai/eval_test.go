package openai_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/testengine"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/openai"
)

// echoScores is a loglikelihood request as lm-eval-harness sends it: the context and the
// continuation as one prompt, echo with logprobs, max_tokens 0. It returns the response's raw
// choice.
type echoChoice struct {
	Text     string `json:"text"`
	Logprobs struct {
		Tokens        []string             `json:"tokens"`
		TokenLogprobs []*float64           `json:"token_logprobs"`
		TopLogprobs   []map[string]float64 `json:"top_logprobs"`
		TextOffset    []int                `json:"text_offset"`
	} `json:"logprobs"`
	FinishReason string `json:"finish_reason"`
}

// A loglikelihood computed as lm-eval-harness does (echo + logprobs + max_tokens 0 through the
// official client: the sum of the continuation tokens' logprobs given the context, and whether
// each is the greedy choice) equals transformers + PEFT's, for the base model and each adapter
// of two architectures; the first prompt token has null logprobs and nothing is generated.
func TestEchoLoglikelihoodMatchesHF(t *testing.T) {
	for _, name := range []string{"llama", "qwen3"} {
		t.Run(name, func(t *testing.T) {
			e := fixtureEngine(t, name)
			srv := newServer(t, e, openai.Options{APIKey: testKey})
			client := newClient(srv.URL)
			ctx := context.Background()
			for _, c := range loadCases(t, name) {
				model := c.Adapter
				if model == "" {
					model = name
				}
				cont := c.Tokens()
				prompt := append(append([]int(nil), c.Prompt...), cont...)
				var want float64
				for i, s := range c.Steps {
					want += fixture.LogSoftmaxAt(s.Logits, cont[i])
				}
				// Twice: the second time the prompt's pages are in the prefix cache, which has no
				// logits; the answer must not change.
				for pass := 0; pass < 2; pass++ {
					resp, err := client.Completions.New(ctx, oai.CompletionNewParams{
						Model:     oai.CompletionNewParamsModel(model),
						Prompt:    oai.CompletionNewParamsPromptUnion{OfArrayOfTokens: ids64(prompt)},
						MaxTokens: oai.Int(0), Echo: oai.Bool(true), Logprobs: oai.Int(1), Temperature: oai.Float(0),
					})
					if err != nil {
						t.Fatalf("%s %v: %v", model, c.Prompt, err)
					}
					var raw struct {
						Choices []echoChoice `json:"choices"`
					}
					if err := json.Unmarshal([]byte(resp.RawJSON()), &raw); err != nil {
						t.Fatal(err)
					}
					ch := raw.Choices[0]
					lp := ch.Logprobs
					if len(lp.Tokens) != len(prompt) || len(lp.TokenLogprobs) != len(prompt) || len(lp.TopLogprobs) != len(prompt) || len(lp.TextOffset) != len(prompt) {
						t.Fatalf("%s: logprobs of %d tokens, want the prompt's %d: %s", model, len(lp.Tokens), len(prompt), resp.RawJSON())
					}
					if lp.TokenLogprobs[0] != nil || lp.TopLogprobs[0] != nil {
						t.Errorf("%s: the first prompt token has logprobs %v %v, want null", model, lp.TokenLogprobs[0], lp.TopLogprobs[0])
					}
					var got float64
					greedy := true
					for i, tok := range cont {
						k := len(c.Prompt) + i
						if lp.TokenLogprobs[k] == nil {
							t.Fatalf("%s: token %d has null logprob", model, k)
						}
						v := *lp.TokenLogprobs[k]
						if d := math.Abs(v - fixture.LogSoftmaxAt(c.Steps[i].Logits, tok)); d > 1e-3 {
							t.Errorf("%s: continuation token %d logprob %v, reference %v", model, i, v, fixture.LogSoftmaxAt(c.Steps[i].Logits, tok))
						}
						got += v
						name := "token_id:" + strconv.Itoa(tok)
						if lp.Tokens[k] != name || lp.TopLogprobs[k][name] != v {
							t.Errorf("%s: token %d is %q with top %v, want %q at %v", model, k, lp.Tokens[k], lp.TopLogprobs[k], name, v)
						}
						for alt, av := range lp.TopLogprobs[k] {
							if alt != name && av > v {
								greedy = false
							}
						}
					}
					if math.Abs(got-want) > 1e-3*float64(len(cont)) {
						t.Errorf("%s %v: loglikelihood %v, reference %v", model, c.Prompt, got, want)
					}
					// The reference generated the continuation greedily.
					if !greedy {
						t.Errorf("%s: is_greedy false for the reference's own greedy continuation", model)
					}
					if ch.FinishReason != "length" || resp.Usage.CompletionTokens != 0 || resp.Usage.PromptTokens != int64(len(prompt)) {
						t.Errorf("%s: finish %q usage %+v, want length and no completion tokens", model, ch.FinishReason, resp.Usage)
					}
				}
			}
		})
	}
}

// A long prompt is scored in chunks (a step scores a bounded number of rows) while other
// requests share the batch: every prompt token's logprob depends only on the tokens before
// it, so a prompt's logprobs equal those of its prefix scored alone.
func TestEchoLogprobsLongPromptInChunks(t *testing.T) {
	e, _ := demoEngine(t)
	srv := newServer(t, e, openai.Options{})
	text := strings.Repeat("func main() { fmt.Println(\"hello, world\") }\n", 4)
	score := func(prompt string) echoChoice {
		st, body := post(t, srv.URL, "/v1/completions", fmt.Sprintf(`{"prompt":%q,"echo":true,"logprobs":2,"max_tokens":0}`, prompt))
		if st != 200 {
			t.Fatalf("status %d: %s", st, body)
		}
		var r struct {
			Choices []echoChoice `json:"choices"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatal(err)
		}
		return r.Choices[0]
	}
	var wg sync.WaitGroup
	for range 3 { // company in the batch
		wg.Add(1)
		go func() {
			defer wg.Done()
			post(t, srv.URL, "/v1/completions", `{"prompt":"package main","max_tokens":20,"temperature":0}`)
		}()
	}
	long := score(text)
	wg.Wait()
	if n := len(long.Logprobs.Tokens); n < 150 {
		t.Fatalf("the prompt has %d tokens; the test wants more than two steps' worth of scored rows", n)
	}
	if long.Text != text || strings.Join(long.Logprobs.Tokens, "") != text {
		t.Errorf("echo %q, tokens %q: want the prompt", long.Text, strings.Join(long.Logprobs.Tokens, ""))
	}
	half := text[:len(text)/2]
	short := score(half)
	for i, v := range short.Logprobs.TokenLogprobs {
		w := long.Logprobs.TokenLogprobs[i]
		if (v == nil) != (i == 0) || (w == nil) != (i == 0) {
			t.Fatalf("token %d: logprobs %v and %v; only the first is null", i, v, w)
		}
		if i > 0 && math.Abs(*v-*w) > 1e-4 {
			t.Errorf("token %d (%q): %v alone, %v in the longer prompt", i, short.Logprobs.Tokens[i], *v, *w)
		}
		if short.Logprobs.TextOffset[i] != long.Logprobs.TextOffset[i] {
			t.Errorf("token %d: text offset %d and %d", i, short.Logprobs.TextOffset[i], long.Logprobs.TextOffset[i])
		}
	}
}

// Echo with logprobs streamed sends the prompt's tokens and logprobs in the choice's first
// chunk, then the generated ones, with the same values as the collected response.
func TestEchoLogprobsStreamed(t *testing.T) {
	e, _ := demoEngine(t)
	srv := newServer(t, e, openai.Options{})
	client := newClient(srv.URL)
	ctx := context.Background()
	p := oai.CompletionNewParams{Model: "loraplex-demo", Prompt: oai.CompletionNewParamsPromptUnion{OfString: oai.String("import os\n")},
		MaxTokens: oai.Int(4), Echo: oai.Bool(true), Logprobs: oai.Int(1), Temperature: oai.Float(0)}
	whole, err := client.Completions.New(ctx, p, option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	wl := whole.Choices[0].Logprobs
	if !strings.HasPrefix(whole.Choices[0].Text, "import os\n") || !strings.HasPrefix(strings.Join(wl.Tokens, ""), "import os\n") || len(wl.Tokens) != int(whole.Usage.TotalTokens) {
		t.Fatalf("text %q, tokens %q: want the prompt's and the 4 generated", whole.Choices[0].Text, wl.Tokens)
	}
	stream := client.Completions.NewStreaming(ctx, p, option.WithJSONSet("ignore_eos", true))
	var tokens []string
	var lps []float64
	var text string
	for stream.Next() {
		ch := stream.Current().Choices[0]
		text += ch.Text
		tokens = append(tokens, ch.Logprobs.Tokens...)
		lps = append(lps, ch.Logprobs.TokenLogprobs...)
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if text != whole.Choices[0].Text || strings.Join(tokens, "") != strings.Join(wl.Tokens, "") || len(lps) != len(wl.TokenLogprobs) {
		t.Fatalf("streamed %q (%d logprobs), collected %q (%d)", text, len(lps), whole.Choices[0].Text, len(wl.TokenLogprobs))
	}
	for i := range lps {
		if lps[i] != wl.TokenLogprobs[i] {
			t.Errorf("token %d: streamed logprob %v, collected %v", i, lps[i], wl.TokenLogprobs[i])
		}
	}
}

type vllmLogprob struct {
	Logprob      float64 `json:"logprob"`
	Rank         int     `json:"rank"`
	DecodedToken string  `json:"decoded_token"`
}

// vLLM's prompt_logprobs: completions answer per choice, chat once per response; null for
// the first prompt token, then a map from token id to logprob, rank and text holding the
// prompt token (with the logprob echo gives it) and the top N ranked 1..N.
func TestPromptLogprobsVLLMShape(t *testing.T) {
	e, ct := demoEngine(t)
	srv := newServer(t, e, openai.Options{ChatTemplate: ct})
	st, body := post(t, srv.URL, "/v1/completions",
		`{"prompt":"int main(void) {","max_tokens":1,"prompt_logprobs":2,"echo":true,"logprobs":0,"return_token_ids":true}`)
	if st != 200 {
		t.Fatalf("status %d: %s", st, body)
	}
	var r struct {
		Choices []struct {
			PromptTokenIDs []int                    `json:"prompt_token_ids"`
			PromptLogprobs []map[string]vllmLogprob `json:"prompt_logprobs"`
			Logprobs       echoChoice               `json:"-"`
		} `json:"choices"`
	}
	var echo struct {
		Choices []echoChoice `json:"choices"`
	}
	json.Unmarshal(body, &r)
	json.Unmarshal(body, &echo)
	ch, lp := r.Choices[0], echo.Choices[0].Logprobs
	if len(ch.PromptLogprobs) != len(ch.PromptTokenIDs) || len(ch.PromptLogprobs) < 3 || ch.PromptLogprobs[0] != nil {
		t.Fatalf("prompt_logprobs %v for prompt %v", ch.PromptLogprobs, ch.PromptTokenIDs)
	}
	for i := 1; i < len(ch.PromptTokenIDs); i++ {
		m := ch.PromptLogprobs[i]
		own, ok := m[strconv.Itoa(ch.PromptTokenIDs[i])]
		if !ok || own.Logprob != *lp.TokenLogprobs[i] || own.DecodedToken != lp.Tokens[i] || own.Rank < 1 {
			t.Errorf("token %d: entry %+v (in %v), echo says %q %v", i, own, ok, lp.Tokens[i], *lp.TokenLogprobs[i])
		}
		ranks := map[int]float64{}
		for _, v := range m {
			ranks[v.Rank] = v.Logprob
		}
		if _, ok := ranks[1]; !ok || ranks[1] < ranks[2] || len(m) < 2 || len(m) > 3 {
			t.Errorf("token %d: %v, want the top 2 ranked 1 and 2 beside the prompt token", i, m)
		}
	}

	// Chat: the rendered prompt's, once per response.
	st, body = post(t, srv.URL, "/v1/chat/completions",
		`{"messages":[{"role":"user","content":"hi"}],"max_tokens":1,"prompt_logprobs":0}`)
	if st != 200 {
		t.Fatalf("chat status %d: %s", st, body)
	}
	var cr struct {
		PromptLogprobs []map[string]vllmLogprob `json:"prompt_logprobs"`
		Usage          struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	json.Unmarshal(body, &cr)
	if len(cr.PromptLogprobs) != cr.Usage.PromptTokens || cr.PromptLogprobs[0] != nil {
		t.Fatalf("chat prompt_logprobs %v for %d prompt tokens", cr.PromptLogprobs, cr.Usage.PromptTokens)
	}
	for i, m := range cr.PromptLogprobs[1:] {
		if len(m) != 1 {
			t.Errorf("token %d: %v, want only the prompt token (prompt_logprobs 0)", i+1, m)
		}
	}
}

// max_tokens 0 is a request to score the prompt: without echo there is nothing to return (400).
func TestMaxTokensZeroNeedsEcho(t *testing.T) {
	e, _ := demoEngine(t)
	srv := newServer(t, e, openai.Options{})
	st, body := post(t, srv.URL, "/v1/completions", `{"prompt":"hi","max_tokens":0}`)
	checkError(t, st, body, 400, "max_tokens")
	st, body = post(t, srv.URL, "/v1/completions", `{"prompt":"hi","max_tokens":0,"echo":true}`)
	var r struct {
		Choices []echoChoice `json:"choices"`
	}
	json.Unmarshal(body, &r)
	if st != 200 || r.Choices[0].Text != "hi" || r.Choices[0].FinishReason != "length" {
		t.Errorf("echo without logprobs, max_tokens 0: %d %s", st, body)
	}
}

// logit_bias follows OpenAI: -100 bans a token in practice, +100 forces one, values in between
// shift the choice; the logprobs reported stay those of the raw logits.
func TestLogitBias(t *testing.T) {
	e := fixtureEngine(t, "llama")
	srv := newServer(t, e, openai.Options{APIKey: testKey})
	client := newClient(srv.URL)
	ctx := context.Background()
	c := loadCases(t, "llama")[0]
	first := c.Steps[0]
	second := first.RunnerUp() // its raw logprob is checked below
	gen := func(bias map[string]int64) oai.CompletionChoice {
		p := greedy(c)
		p.MaxTokens, p.Logprobs, p.LogitBias = oai.Int(1), oai.Int(0), bias
		resp, err := client.Completions.New(ctx, p, option.WithJSONSet("return_token_ids", true))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Choices[0]
	}
	tokenOf := func(ch oai.CompletionChoice) int { return extraInts(t, ch.JSON.ExtraFields["token_ids"].Raw())[0] }
	if got := tokenOf(gen(nil)); got != first.Token {
		t.Fatalf("unbiased greedy token %d, reference %d", got, first.Token)
	}
	banned := gen(map[string]int64{strconv.Itoa(first.Token): -100})
	if got := tokenOf(banned); got != second {
		t.Errorf("with the greedy token biased by -100: %d, want the runner-up %d", got, second)
	}
	if lp, want := banned.Logprobs.TokenLogprobs[0], fixture.LogSoftmaxAt(first.Logits, second); math.Abs(lp-want) > 1e-3 {
		t.Errorf("the chosen token's logprob %v, want its raw logprob %v (bias not included)", lp, want)
	}
	last := len(first.Logits) - 1
	if last == first.Token {
		last--
	}
	if got := tokenOf(gen(map[string]int64{strconv.Itoa(last): 100})); got != last {
		t.Errorf("with token %d biased by +100: %d", last, got)
	}
	// A bias smaller than the margin changes nothing.
	if got := tokenOf(gen(map[string]int64{strconv.Itoa(second): 0})); got != first.Token {
		t.Errorf("a zero bias changed the greedy token to %d", got)
	}
}

// GET /v1/models/{id} answers the card /v1/models lists under that id (base, adapter or
// router), through the official client; an unknown id is OpenAI's 404 (model_not_found).
func TestRetrieveModel(t *testing.T) {
	e := fixtureEngine(t, "llama")
	srv := newServer(t, e, openai.Options{APIKey: testKey})
	client := newClient(srv.URL)
	ctx := context.Background()
	if _, err := client.Completions.New(ctx, greedy(loadCases(t, "llama")[3])); err != nil { // loads an adapter
		t.Fatal(err)
	}
	list, err := client.Models.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Data) < 2 {
		t.Fatalf("%d models listed", len(list.Data))
	}
	for _, want := range list.Data {
		got, err := client.Models.Get(ctx, want.ID)
		if err != nil {
			t.Fatalf("%s: %v", want.ID, err)
		}
		if got.RawJSON() != want.RawJSON() {
			t.Errorf("%s: %s, listed as %s", want.ID, got.RawJSON(), want.RawJSON())
		}
	}
	_, err = client.Models.Get(ctx, "no-such-model")
	var apiErr *oai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "model_not_found" || apiErr.Param != "model" {
		t.Fatalf("unknown model: %v", err)
	}
}

// GET /version answers vLLM's {"version": ...}, without the API key as vLLM does.
func TestVersion(t *testing.T) {
	e := fixtureEngine(t, "llama")
	srv := newServer(t, e, openai.Options{APIKey: testKey})
	st, body := get(t, srv.URL+"/version")
	var v struct {
		Version *string `json:"version"`
	}
	if st != 200 || json.Unmarshal(body, &v) != nil || v.Version == nil || *v.Version == "" {
		t.Fatalf("%d %s", st, body)
	}
}

// Prompt logprobs survive preemption: with a KV cache too small for the requests at once,
// sequences are preempted and recomputed, and each still gets every prompt token's logprob
// exactly once, equal to what it gets alone.
func TestPromptLogprobsWithPreemption(t *testing.T) {
	e := testengine.New(t, "llama", serve.Options{MaxNumSeqs: 4, MaxBatchedTokens: 32, MaxModelLen: 128, KVCacheTokens: 128, Logger: quiet})
	srv := newServer(t, e, openai.Options{})
	prompt := func(i int) string {
		ids := make([]string, 60)
		for j := range ids {
			ids[j] = strconv.Itoa((i*61 + j*7) % 300)
		}
		return "[" + strings.Join(ids, ",") + "]"
	}
	score := func(i int) []map[string]vllmLogprob {
		st, body := post(t, srv.URL, "/v1/completions", `{"prompt":`+prompt(i)+`,"max_tokens":40,"ignore_eos":true,"prompt_logprobs":1,"temperature":0}`)
		if st != 200 {
			t.Errorf("status %d: %s", st, body)
			return nil
		}
		var r struct {
			Choices []struct {
				PromptLogprobs []map[string]vllmLogprob `json:"prompt_logprobs"`
			} `json:"choices"`
		}
		json.Unmarshal(body, &r)
		return r.Choices[0].PromptLogprobs
	}
	alone := make([][]map[string]vllmLogprob, 4)
	for i := range alone {
		alone[i] = score(i)
	}
	before := e.Stats().Preemptions.Load()
	together := make([][]map[string]vllmLogprob, 4)
	var wg sync.WaitGroup
	for i := range together {
		wg.Add(1)
		go func() {
			defer wg.Done()
			together[i] = score(i)
		}()
	}
	wg.Wait()
	if e.Stats().Preemptions.Load() == before {
		t.Fatalf("no preemption: the test does not test what it says")
	}
	for i := range together {
		if len(together[i]) != 60 || len(alone[i]) != 60 {
			t.Fatalf("request %d: %d prompt logprobs together, %d alone; want 60", i, len(together[i]), len(alone[i]))
		}
		for k := 1; k < 60; k++ {
			for id, w := range alone[i][k] {
				g, ok := together[i][k][id]
				if !ok || math.Abs(g.Logprob-w.Logprob) > 1e-4 || g.Rank != w.Rank {
					t.Errorf("request %d token %d: %v together, %v alone", i, k, together[i][k], alone[i][k])
				}
			}
		}
	}
}

// A one-token prompt has nothing to score: echo with logprobs gives its token with null
// logprobs, prompt_logprobs [null], and max_tokens 0 still ends cleanly.
func TestEchoOneTokenPrompt(t *testing.T) {
	e := fixtureEngine(t, "llama")
	srv := newServer(t, e, openai.Options{})
	st, body := post(t, srv.URL, "/v1/completions", `{"prompt":[[7],[8,9]],"echo":true,"logprobs":2,"max_tokens":0,"prompt_logprobs":2}`)
	var r struct {
		Choices []struct {
			echoChoice
			PromptLogprobs []map[string]vllmLogprob `json:"prompt_logprobs"`
		} `json:"choices"`
	}
	if st != 200 || json.Unmarshal(body, &r) != nil || len(r.Choices) != 2 {
		t.Fatalf("%d %s", st, body)
	}
	one, two := r.Choices[0], r.Choices[1]
	if len(one.Logprobs.TokenLogprobs) != 1 || one.Logprobs.TokenLogprobs[0] != nil || len(one.PromptLogprobs) != 1 || one.PromptLogprobs[0] != nil {
		t.Errorf("one-token prompt: %s", body)
	}
	if len(two.Logprobs.TokenLogprobs) != 2 || two.Logprobs.TokenLogprobs[1] == nil || len(two.PromptLogprobs) != 2 || len(two.PromptLogprobs[1]) < 2 {
		t.Errorf("two-token prompt: %s", body)
	}
}
