package openai_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/loraplex/loraplex/serve/openai"
)

const testKey = "sk-test"

func newClient(url string, opts ...option.RequestOption) oai.Client {
	return oai.NewClient(append([]option.RequestOption{option.WithBaseURL(url + "/v1/"), option.WithAPIKey(testKey), option.WithMaxRetries(0)}, opts...)...)
}

func ids64(v []int) []int64 {
	out := make([]int64, len(v))
	for i, x := range v {
		out[i] = int64(x)
	}
	return out
}

// extraInts reads a vLLM extra field such as token_ids from a client response.
func extraInts(t *testing.T, raw string) []int {
	t.Helper()
	var v []int
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		t.Fatalf("extra field %q: %v", raw, err)
	}
	return v
}

func greedy(c fixtureCase) oai.CompletionNewParams {
	model := c.Adapter
	if model == "" {
		model = "llama"
	}
	return oai.CompletionNewParams{
		Model:       oai.CompletionNewParamsModel(model),
		Prompt:      oai.CompletionNewParamsPromptUnion{OfArrayOfTokens: ids64(c.Prompt)},
		MaxTokens:   oai.Int(int64(len(c.Steps))),
		Temperature: oai.Float(0),
	}
}

// TestCompletionsMatchHF drives the real server with the official client and checks that greedy
// tokens for the base model and each adapter equal transformers + PEFT's, both in one response
// and streamed, for two architectures.
func TestCompletionsMatchHF(t *testing.T) {
	for _, name := range []string{"llama", "qwen3"} {
		t.Run(name, func(t *testing.T) {
			e := fixtureEngine(t, name)
			srv := newServer(t, e, openai.Options{APIKey: testKey})
			client := newClient(srv.URL)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for _, c := range loadCases(t, name) {
				if c.Adapter == "" {
					c.Adapter = name
				}
				want := c.Tokens()
				extra := []option.RequestOption{option.WithJSONSet("return_token_ids", true), option.WithJSONSet("ignore_eos", true)}
				resp, err := client.Completions.New(ctx, greedy(c), extra...)
				if err != nil {
					t.Fatalf("%s %v: %v", c.Adapter, c.Prompt, err)
				}
				ch := resp.Choices[0]
				if got := extraInts(t, ch.JSON.ExtraFields["token_ids"].Raw()); !slices.Equal(got, want) {
					t.Errorf("%s %v: tokens %v, want %v", c.Adapter, c.Prompt, got, want)
				}
				if got := extraInts(t, ch.JSON.ExtraFields["prompt_token_ids"].Raw()); !slices.Equal(got, c.Prompt) {
					t.Errorf("prompt_token_ids %v, want %v", got, c.Prompt)
				}
				if ch.FinishReason != "length" || resp.Usage.PromptTokens != int64(len(c.Prompt)) || resp.Usage.CompletionTokens != int64(len(want)) {
					t.Errorf("finish %q usage %+v", ch.FinishReason, resp.Usage)
				}
				if resp.Object != "text_completion" || !strings.HasPrefix(resp.ID, "cmpl-") || resp.Model != c.Adapter {
					t.Errorf("envelope: object %q id %q model %q", resp.Object, resp.ID, resp.Model)
				}

				// The same request streamed, with a usage chunk at the end.
				p := greedy(c)
				p.StreamOptions = oai.ChatCompletionStreamOptionsParam{IncludeUsage: oai.Bool(true)}
				stream := client.Completions.NewStreaming(ctx, p, extra...)
				var got []int
				var finish string
				var usageSeen bool
				for stream.Next() {
					chunk := stream.Current()
					if len(chunk.Choices) == 0 {
						usageSeen = chunk.Usage.CompletionTokens == int64(len(want))
						continue
					}
					got = append(got, extraInts(t, chunk.Choices[0].JSON.ExtraFields["token_ids"].Raw())...)
					if chunk.Choices[0].FinishReason != "" {
						finish = string(chunk.Choices[0].FinishReason)
					}
				}
				if err := stream.Err(); err != nil {
					t.Fatal(err)
				}
				stream.Close()
				if !slices.Equal(got, want) || finish != "length" || !usageSeen {
					t.Errorf("stream %s %v: tokens %v finish %q usage %v, want %v", c.Adapter, c.Prompt, got, finish, usageSeen, want)
				}
			}
		})
	}
}

// TestCompletionsLogprobsAndN checks logprobs with token-id strings and that n greedy samples
// each equal the reference.
func TestCompletionsLogprobsAndN(t *testing.T) {
	e := fixtureEngine(t, "llama")
	srv := newServer(t, e, openai.Options{})
	client := newClient(srv.URL)
	ctx := context.Background()
	c := loadCases(t, "llama")[3] // an adapter case
	p := greedy(c)
	p.Logprobs = oai.Int(3)
	p.N = oai.Int(3)
	resp, err := client.Completions.New(ctx, p, option.WithJSONSet("ignore_eos", true), option.WithJSONSet("return_tokens_as_token_ids", true))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Choices) != 3 {
		t.Fatalf("%d choices, want 3", len(resp.Choices))
	}
	for i, ch := range resp.Choices {
		if ch.Index != int64(i) {
			t.Errorf("choice %d has index %d", i, ch.Index)
		}
		lp := ch.Logprobs
		if len(lp.Tokens) != len(c.Steps) || len(lp.TokenLogprobs) != len(c.Steps) || len(lp.TopLogprobs) != len(c.Steps) || len(lp.TextOffset) != len(c.Steps) {
			t.Fatalf("logprobs lengths: %+v", lp)
		}
		for k, s := range c.Steps {
			if want := fmt.Sprintf("token_id:%d", s.Token); lp.Tokens[k] != want {
				t.Errorf("choice %d step %d: token %q, want %q", i, k, lp.Tokens[k], want)
			}
			if lp.TokenLogprobs[k] > 0 {
				t.Errorf("logprob %v > 0", lp.TokenLogprobs[k])
			}
			// Greedy: the chosen token is the best alternative.
			top := lp.TopLogprobs[k]
			if len(top) < 3 {
				t.Errorf("step %d: %d alternatives, want >= 3", k, len(top))
			}
			for tok, v := range top {
				if v > lp.TokenLogprobs[k]+1e-6 {
					t.Errorf("step %d: alternative %s (%v) beats the greedy choice (%v)", k, tok, v, lp.TokenLogprobs[k])
				}
			}
		}
	}
	if resp.Usage.PromptTokens != int64(len(c.Prompt)) || resp.Usage.CompletionTokens != int64(3*len(c.Steps)) {
		t.Errorf("usage %+v", resp.Usage)
	}
}

func TestModelsList(t *testing.T) {
	e := fixtureEngine(t, "llama")
	srv := newServer(t, e, openai.Options{APIKey: testKey})
	client := newClient(srv.URL)
	page, err := client.Models.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range page.Data {
		ids = append(ids, m.ID)
		if m.OwnedBy != "loraplex" || m.Object != "model" {
			t.Errorf("%s: owned_by %q object %q", m.ID, m.OwnedBy, m.Object)
		}
		parent, root := m.JSON.ExtraFields["parent"].Raw(), m.JSON.ExtraFields["root"].Raw()
		if m.ID == "llama" && (parent != "null" || root != `"llama"`) || m.ID != "llama" && (parent != `"llama"` || root != `"llama"`) {
			t.Errorf("%s: parent %s root %s", m.ID, parent, root)
		}
		if m.JSON.ExtraFields["max_model_len"].Raw() != "128" {
			t.Errorf("%s: max_model_len %s", m.ID, m.JSON.ExtraFields["max_model_len"].Raw())
		}
	}
	if want := append([]string{"llama"}, adapterNames...); !slices.Equal(ids, want) {
		t.Errorf("models %v, want %v", ids, want)
	}
}

// TestClientErrors checks that the official client sees our errors as OpenAI errors.
func TestClientErrors(t *testing.T) {
	e := fixtureEngine(t, "llama")
	srv := newServer(t, e, openai.Options{APIKey: testKey})
	ctx := context.Background()
	c := loadCases(t, "llama")[0]
	p := greedy(c)
	p.Model = "no-such-adapter"
	client, bad := newClient(srv.URL), newClient(srv.URL, option.WithAPIKey("wrong"))
	_, err := client.Completions.New(ctx, p)
	var apiErr *oai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Type != "NotFoundError" || apiErr.Param != "model" {
		t.Errorf("unknown model: %v", err)
	}
	_, err = bad.Completions.New(ctx, greedy(c))
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 || apiErr.Code != "invalid_api_key" {
		t.Errorf("bad key: %v", err)
	}
}

// TestChatDemo runs chat completions on the demo model through the client, plain and streamed,
// and checks that the streamed text equals the plain text for the same seed.
func TestChatDemo(t *testing.T) {
	e, ct := demoEngine(t)
	srv := newServer(t, e, openai.Options{ChatTemplate: ct})
	client := newClient(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	params := oai.ChatCompletionNewParams{
		Model:       "loraplex-demo",
		Messages:    []oai.ChatCompletionMessageParamUnion{oai.SystemMessage("be brief"), oai.UserMessage("hello")},
		MaxTokens:   oai.Int(12),
		Seed:        oai.Int(7),
		Logprobs:    oai.Bool(true),
		TopLogprobs: oai.Int(2),
	}
	resp, err := client.Chat.Completions.New(ctx, params, option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Object != "chat.completion" || !strings.HasPrefix(resp.ID, "chatcmpl-") || len(resp.Choices) != 1 {
		t.Fatalf("envelope %+v", resp)
	}
	ch := resp.Choices[0]
	if ch.Message.Role != "assistant" || ch.FinishReason != "length" || len(ch.Logprobs.Content) != 12 || resp.Usage.CompletionTokens != 12 {
		t.Errorf("choice %+v usage %+v", ch, resp.Usage)
	}
	for _, lp := range ch.Logprobs.Content {
		if len(lp.TopLogprobs) != 2 {
			t.Errorf("top_logprobs %d, want 2", len(lp.TopLogprobs))
		}
	}
	// The prompt is the rendered template, tokenized without an extra BOS.
	st, body := post(t, srv.URL, "/tokenize", `{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello"}]}`)
	var tk struct{ Count int }
	json.Unmarshal(body, &tk)
	if st != 200 || int64(tk.Count) != resp.Usage.PromptTokens {
		t.Errorf("tokenize says %d tokens (%d %s); chat used %d", tk.Count, st, body, resp.Usage.PromptTokens)
	}

	params.Logprobs, params.TopLogprobs = oai.Bool(false), oai.Int(0)
	params.StreamOptions = oai.ChatCompletionStreamOptionsParam{IncludeUsage: oai.Bool(true)}
	stream := client.Chat.Completions.NewStreaming(ctx, params, option.WithJSONSet("ignore_eos", true))
	defer stream.Close()
	var text strings.Builder
	first := true
	for stream.Next() {
		chunk := stream.Current()
		if chunk.Object != "chat.completion.chunk" {
			t.Errorf("chunk object %q", chunk.Object)
		}
		if len(chunk.Choices) == 0 {
			if chunk.Usage.CompletionTokens != 12 {
				t.Errorf("usage chunk %+v", chunk.Usage)
			}
			continue
		}
		d := chunk.Choices[0].Delta
		if first != (d.Role == "assistant") {
			t.Errorf("role %q in chunk (first=%v)", d.Role, first)
		}
		first = false
		text.WriteString(d.Content)
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if text.String() != ch.Message.Content {
		t.Errorf("streamed %q, plain %q", text.String(), ch.Message.Content)
	}
}
