//go:build cuda

package cuda_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"

	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/internal/decodebench"
	"github.com/loraplex/loraplex/internal/schematest"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/openai"
	"github.com/loraplex/loraplex/structured"
	"github.com/loraplex/loraplex/tokenizer"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// demoServer serves the built-in demo model (tokenizer, chat template) from engine options
// opt on GPU b, over real HTTP on loopback, and returns the engine, the server's URL and the
// demo's tokenizer.
func demoServer(t testing.TB, b *cuda.Backend, opt serve.Options) (*serve.Engine, string, *tokenizer.Tokenizer) {
	t.Helper()
	cfg, w, tok, tmpl, err := demo.Build(b)
	if err != nil {
		t.Fatal(err)
	}
	opt.ModelName = demo.Name
	e, err := serve.NewEngine(cfg, b, w, tok, opt)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := chat.Parse(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(openai.New(e, openai.Options{APIKey: "sk-test", ChatTemplate: ct}))
	t.Cleanup(func() { srv.Close(); e.Close(); w.Close() })
	return e, srv.URL, tok
}

func newClient(url string) oai.Client {
	return oai.NewClient(option.WithBaseURL(url+"/v1/"), option.WithAPIKey("sk-test"), option.WithMaxRetries(0))
}

// Structured outputs and logit_bias work on the GPU as on the CPU (issue 16): json_schema
// requests sent by the official client to the demo model served on CUDA, sampling hot
// (near-random text) and sharing batches with each other and with unconstrained requests (so
// the kernel sees masks on some rows only, and rows sharing one grammar state's mask), always
// end with JSON the schema validates; the mask, not the model, makes it valid. A greedy
// completion with a logit_bias of +100 on one token produces only that token.
func TestStructuredOutputOnCUDA(t *testing.T) {
	g := newGPU(t)
	_, url, tok := demoServer(t, g, serve.Options{MaxNumSeqs: 16, MaxBatchedTokens: 512, MaxModelLen: 512})
	client := newClient(url)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var schema map[string]any
	if err := json.Unmarshal([]byte(schematest.Person), &schema); err != nil {
		t.Fatal(err)
	}
	val := schematest.Compile(t, schematest.Person)

	var wg sync.WaitGroup
	for seed := range int64(8) {
		wg.Go(func() {
			resp, err := client.Chat.Completions.New(ctx, oai.ChatCompletionNewParams{
				Model:       demo.Name,
				Messages:    []oai.ChatCompletionMessageParamUnion{oai.UserMessage("Describe a user as JSON.")},
				Temperature: oai.Float(1.5),
				Seed:        oai.Int(seed),
				MaxTokens:   oai.Int(400),
				ResponseFormat: oai.ChatCompletionNewParamsResponseFormatUnion{OfJSONSchema: &shared.ResponseFormatJSONSchemaParam{
					JSONSchema: shared.ResponseFormatJSONSchemaJSONSchemaParam{Name: "person", Schema: schema, Strict: oai.Bool(true)}}},
			})
			if err != nil {
				t.Errorf("seed %d: %v", seed, err)
				return
			}
			ch := resp.Choices[0]
			text := ch.Message.Content
			if ch.FinishReason != "stop" {
				t.Errorf("seed %d: finish %q after %q", seed, ch.FinishReason, text)
				return
			}
			t.Logf("seed %d: %s", seed, text)
			if err := schematest.Validate(val, text); err != nil {
				t.Errorf("seed %d: %q does not validate: %v", seed, text, err)
			}
		})
		// Unconstrained neighbours in the same batches.
		wg.Go(func() {
			if _, err := client.Completions.New(ctx, oai.CompletionNewParams{Model: oai.CompletionNewParamsModel(demo.Name),
				Prompt: oai.CompletionNewParamsPromptUnion{OfString: oai.String("func main() {")}, MaxTokens: oai.Int(64),
				Temperature: oai.Float(1), Seed: oai.Int(seed)}); err != nil {
				t.Errorf("free request %d: %v", seed, err)
			}
		})
	}
	wg.Wait()

	ids, err := tok.Encode(" the", false)
	if err != nil || len(ids) == 0 {
		t.Fatalf("encode: %v %v", ids, err)
	}
	forced := ids[0]
	resp, err := client.Completions.New(ctx, oai.CompletionNewParams{Model: oai.CompletionNewParamsModel(demo.Name),
		Prompt: oai.CompletionNewParamsPromptUnion{OfString: oai.String("hello")}, MaxTokens: oai.Int(6), Temperature: oai.Float(0),
		LogitBias: map[string]int64{strconv.Itoa(forced): 100}}, option.WithJSONSet("return_token_ids", true))
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	if err := json.Unmarshal([]byte(resp.Choices[0].JSON.ExtraFields["token_ids"].Raw()), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 6 {
		t.Fatalf("logit_bias +100: %d tokens %v", len(got), got)
	}
	for i, id := range got {
		if id != forced {
			t.Fatalf("logit_bias +100 on %d: token %d is %d (%v)", forced, i, id, got)
		}
	}
	if err := g.Err(); err != nil {
		t.Fatal(err)
	}
}

// benchMaxTokens is few enough that decodebench.Schema's outputs can hardly end sooner.
const benchMaxTokens = 32

// decodeTokensPerSecond generates batch requests of benchMaxTokens tokens at once through e
// (prompt prompt, T=1, seeds from *seed) round after round: decodebench.TokensPerSecond, whose
// untimed first round also records the step graphs here.
func decodeTokensPerSecond(b *testing.B, e *serve.Engine, prompt []int, batch int, constraint *serve.Constraint, seed *uint64) float64 {
	return decodebench.TokensPerSecond(b, batch, seed, func(s uint64) decodebench.Wait {
		st, err := e.Generate(context.Background(), serve.Request{Model: demo.Name, Prompt: prompt,
			Params: serve.SamplingParams{MaxTokens: benchMaxTokens, Temperature: 1, Seed: &s, Constraint: constraint}})
		if err != nil {
			b.Fatal(err)
		}
		return func() (int, string, error) {
			ev, err := st.Collect(context.Background())
			return len(ev.Tokens), ev.Finish, err
		}
	})
}

// BenchmarkConstrainedDecodeCUDA is end-to-end decode throughput of the demo model on the GPU,
// free or held to decodebench.Schema, at batch 1 and 64; it logs constrained ÷ free per batch (issue
// 16's goal: at least 0.9 at batch 64).
func BenchmarkConstrainedDecodeCUDA(b *testing.B) {
	g := newGPU(b)
	e, _, tok := demoServer(b, g, serve.Options{MaxNumSeqs: 64, MaxBatchedTokens: 2048, MaxModelLen: 512})
	prompt, err := tok.Encode("func main() {", false)
	if err != nil {
		b.Fatal(err)
	}
	schema := &serve.Constraint{Spec: structured.Spec{Kind: structured.JSONSchema, Text: decodebench.Schema}, Param: "bench"}
	seed := uint64(0)
	for _, batch := range []int{1, 64} {
		var free, constrained float64
		b.Run(fmt.Sprintf("free/batch=%d", batch), func(b *testing.B) {
			free = decodeTokensPerSecond(b, e, prompt, batch, nil, &seed)
			b.ReportMetric(free, "tok/s")
		})
		b.Run(fmt.Sprintf("json_schema/batch=%d", batch), func(b *testing.B) {
			constrained = decodeTokensPerSecond(b, e, prompt, batch, schema, &seed)
			b.ReportMetric(constrained, "tok/s")
		})
		if free > 0 {
			b.Logf("batch %d: constrained %.0f tok/s, free %.0f tok/s, constrained ÷ free = %.3f", batch, constrained, free, constrained/free)
		}
	}
}
