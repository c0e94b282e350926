package grpcapi_test

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/schematest"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
	"github.com/loraplex/loraplex/serve/openai"
)

// generateAll runs one Generate call to its end and returns every response.
func generateAll(t *testing.T, ts *testServer, req *loraplexv1.GenerateRequest) ([]*loraplexv1.GenerateResponse, error) {
	t.Helper()
	st, err := ts.client.Generate(ctxTimeout(t, 60*time.Second), req)
	if err != nil {
		return nil, err
	}
	var out []*loraplexv1.GenerateResponse
	for {
		r, err := st.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
}

// prompt_only with prompt_logprobs scores a prompt the way lm-eval-harness's loglikelihood
// does over HTTP (echo, logprobs, max_tokens 0): nothing is generated, and the continuation's
// logprobs given the context equal transformers + PEFT's, for the base model and an adapter.
func TestPromptOnlyScoresLikeHF(t *testing.T) {
	e := fixtureEngine(t, "llama", serve.Options{MaxModelLen: 128})
	ts := startServer(t, e, grpcapi.Options{})
	for _, c := range loadCases(t, "llama") {
		if c.Adapter != "" && c.Adapter != "a_qv" {
			continue
		}
		cont := c.Tokens()
		prompt := append(append([]int(nil), c.Prompt...), cont...)
		resps, err := generateAll(t, ts, &loraplexv1.GenerateRequest{Model: c.Adapter, Prompt: tokenPrompt(prompt...),
			Params: &loraplexv1.SamplingParams{PromptOnly: true, PromptLogprobs: 2}})
		if err != nil {
			t.Fatalf("%q %v: %v", c.Adapter, c.Prompt, err)
		}
		var lps []*loraplexv1.PromptLogprob
		for _, r := range resps {
			if len(r.GetTokenIds()) > 0 {
				t.Fatalf("%q: prompt_only generated %v", c.Adapter, r.GetTokenIds())
			}
			lps = append(lps, r.GetPromptLogprobs()...)
		}
		last := resps[len(resps)-1]
		if last.GetFinishReason() != "length" || last.GetUsage().GetCompletionTokens() != 0 || last.GetUsage().GetPromptTokens() != int32(len(prompt)) {
			t.Errorf("%q: last response %v, want length with no completion tokens", c.Adapter, last)
		}
		if len(lps) != len(prompt)-1 {
			t.Fatalf("%q: %d prompt logprobs, want one per prompt token after the first (%d)", c.Adapter, len(lps), len(prompt)-1)
		}
		for i, tok := range cont {
			lp := lps[len(c.Prompt)-1+i]
			want := fixture.LogSoftmaxAt(c.Steps[i].Logits, tok)
			if lp.GetTokenId() != int32(tok) || math.Abs(float64(lp.GetLogprob())-want) > 1e-3 {
				t.Errorf("%q: continuation token %d: %v, want token %d logprob %v", c.Adapter, i, lp, tok, want)
			}
			// The reference continued greedily: each continuation token is the most likely.
			if lp.GetRank() != 1 || len(lp.GetTop()) != 2 || lp.GetTop()[0].GetTokenId() != int32(tok) {
				t.Errorf("%q: continuation token %d: rank %d top %v, want rank 1 and itself first of 2", c.Adapter, i, lp.GetRank(), lp.GetTop())
			}
		}
	}
	// max_tokens with prompt_only would be ignored: refused instead.
	_, err := generateAll(t, ts, &loraplexv1.GenerateRequest{Prompt: tokenPrompt(1, 2, 3), Params: &loraplexv1.SamplingParams{PromptOnly: true, MaxTokens: 4}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "prompt_only") {
		t.Errorf("prompt_only with max_tokens 4: %v, want InvalidArgument", err)
	}
}

// logit_bias follows OpenAI on gRPC as on HTTP: -100 bans the greedy token (the runner-up
// comes, with its raw logprob), +100 forces a token.
func TestLogitBiasOnGRPC(t *testing.T) {
	e := fixtureEngine(t, "llama", serve.Options{})
	ts := startServer(t, e, grpcapi.Options{})
	c := loadCases(t, "llama")[0]
	first := c.Steps[0]
	second := first.RunnerUp()
	gen := func(bias map[int32]float64) *loraplexv1.GenerateResponse {
		t.Helper()
		resps, err := generateAll(t, ts, &loraplexv1.GenerateRequest{Prompt: tokenPrompt(c.Prompt...),
			Params: &loraplexv1.SamplingParams{MaxTokens: 1, IgnoreEos: true, Logprobs: -1, LogitBias: bias}})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resps {
			if len(r.GetTokenIds()) > 0 {
				return r
			}
		}
		t.Fatal("no token generated")
		return nil
	}
	if got := gen(nil).GetTokenIds()[0]; got != int32(first.Token) {
		t.Fatalf("unbiased greedy token %d, reference %d", got, first.Token)
	}
	banned := gen(map[int32]float64{int32(first.Token): -100})
	if got := banned.GetTokenIds()[0]; got != int32(second) {
		t.Errorf("greedy token biased by -100: got %d, want the runner-up %d", got, second)
	}
	if lp, want := banned.GetLogprobs()[0].GetChosen().GetLogprob(), fixture.LogSoftmaxAt(first.Logits, second); math.Abs(float64(lp)-want) > 1e-3 {
		t.Errorf("chosen logprob %v, want the raw %v (bias not included)", lp, want)
	}
	last := int32(len(first.Logits) - 1)
	if last == int32(first.Token) {
		last--
	}
	if got := gen(map[int32]float64{last: 100}).GetTokenIds()[0]; got != last {
		t.Errorf("token %d biased by +100: got %d", last, got)
	}
}

// personSchema is a schema with every kind of value the structured-output tests need.
const personSchema = `{"type":"object","properties":{
	"name":{"type":"string","minLength":1,"maxLength":12},
	"age":{"type":"integer"},
	"role":{"enum":["reader","writer","owner"]}},
	"required":["name","age","role"],"additionalProperties":false}`

// StructuredOutput holds the demo model, sampling hot (near-random text), to a JSON schema (the
// output validates), any JSON object, a regex and a choice list, on every seed: the mask, not
// the model, makes the output valid.
func TestStructuredOutputOnGRPC(t *testing.T) {
	e, ct := demoEngine(t)
	ts := startServer(t, e, grpcapi.Options{ChatTemplate: ct})
	schema := schematest.Compile(t, personSchema)
	date := regexp.MustCompile(`^20[0-9]{2}-[01][0-9]-[0-3][0-9]$`)
	choices := []string{"yes", "no", "maybe"}
	kinds := []struct {
		name  string
		so    *loraplexv1.StructuredOutput
		check func(text string) error
	}{
		{"json_schema", &loraplexv1.StructuredOutput{Kind: &loraplexv1.StructuredOutput_JsonSchema{JsonSchema: personSchema}}, func(text string) error {
			return schematest.Validate(schema, text)
		}},
		{"json_object", &loraplexv1.StructuredOutput{Kind: &loraplexv1.StructuredOutput_JsonObject{JsonObject: true}}, func(text string) error {
			var m map[string]any
			return json.Unmarshal([]byte(text), &m)
		}},
		{"regex", &loraplexv1.StructuredOutput{Kind: &loraplexv1.StructuredOutput_Regex{Regex: `20[0-9]{2}-[01][0-9]-[0-3][0-9]`}}, func(text string) error {
			if !date.MatchString(text) {
				return io.ErrUnexpectedEOF
			}
			return nil
		}},
		{"choice", &loraplexv1.StructuredOutput{Kind: &loraplexv1.StructuredOutput_Choice{Choice: &loraplexv1.Choices{Choices: choices}}}, func(text string) error {
			if !slices.Contains(choices, text) {
				return io.ErrUnexpectedEOF
			}
			return nil
		}},
	}
	for _, k := range kinds {
		for seed := range uint64(3) {
			resps, err := generateAll(t, ts, &loraplexv1.GenerateRequest{Model: demo.Name, Prompt: &loraplexv1.GenerateRequest_Text{Text: "Answer: "},
				Params: &loraplexv1.SamplingParams{MaxTokens: 120, Temperature: 1.5, Seed: &seed, StructuredOutput: k.so}})
			if err != nil {
				t.Fatalf("%s seed %d: %v", k.name, seed, err)
			}
			var text strings.Builder
			for _, r := range resps {
				text.WriteString(r.GetText())
			}
			if fr := resps[len(resps)-1].GetFinishReason(); fr != "stop" {
				t.Fatalf("%s seed %d: finish %q after %q", k.name, seed, fr, text.String())
			}
			if err := k.check(text.String()); err != nil {
				t.Errorf("%s seed %d: %q is not valid: %v", k.name, seed, text.String(), err)
			}
		}
	}
}

// A bad logit_bias, prompt_logprobs or structured output is InvalidArgument on gRPC with the
// message HTTP's 400 has for the same value (one engine check, one error table); for a
// structure only the field's name differs (structured_output for response_format), and the
// BadRequest detail names the field.
func TestGRPCRefusesWhatHTTPRefuses(t *testing.T) {
	e, ct := demoEngine(t)
	ts := startServer(t, e, grpcapi.Options{ChatTemplate: ct})
	srv := httptest.NewServer(openai.New(e, openai.Options{ChatTemplate: ct}))
	t.Cleanup(srv.Close)
	manyBias := map[int32]float64{}
	var bigBias strings.Builder
	for i := range serve.MaxLogitBias + 1 {
		manyBias[int32(i)] = 1
		if i > 0 {
			bigBias.WriteByte(',')
		}
		bigBias.WriteString(`"` + strconv.Itoa(i) + `":1`)
	}
	rf := func(schema string) string {
		return `"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":` + schema + `}}`
	}
	jsonSchema := func(s string) *loraplexv1.StructuredOutput {
		return &loraplexv1.StructuredOutput{Kind: &loraplexv1.StructuredOutput_JsonSchema{JsonSchema: s}}
	}
	cases := []struct {
		name       string
		params     *loraplexv1.SamplingParams
		http       string // the same request's fields over HTTP /v1/completions ("": not compared)
		grpcField  string
		httpField  string
		structured bool // the message starts with the field's name
	}{
		{"bias out of vocabulary", &loraplexv1.SamplingParams{LogitBias: map[int32]float64{1 << 20: 1}}, `"logit_bias":{"1048576":1}`, "logit_bias", "logit_bias", false},
		{"bias too large", &loraplexv1.SamplingParams{LogitBias: map[int32]float64{5: 101}}, `"logit_bias":{"5":101}`, "logit_bias", "logit_bias", false},
		{"too many biases", &loraplexv1.SamplingParams{LogitBias: manyBias}, `"logit_bias":{` + bigBias.String() + `}`, "logit_bias", "logit_bias", false},
		{"prompt_logprobs 21", &loraplexv1.SamplingParams{PromptLogprobs: 21}, `"prompt_logprobs":21`, "prompt_logprobs", "prompt_logprobs", false},
		{"schema keyword", &loraplexv1.SamplingParams{StructuredOutput: jsonSchema(`{"type":"string","format":"email"}`)}, rf(`{"type":"string","format":"email"}`), "structured_output", "response_format", true},
		{"conflicting schema", &loraplexv1.SamplingParams{StructuredOutput: jsonSchema(`{"type":"array","minItems":4,"maxItems":1}`)}, rf(`{"type":"array","minItems":4,"maxItems":1}`), "structured_output", "response_format", true},
		{"regex limit", &loraplexv1.SamplingParams{StructuredOutput: &loraplexv1.StructuredOutput{Kind: &loraplexv1.StructuredOutput_Regex{Regex: "(?:a|b)*a(?:a|b){24}"}}},
			`"structured_outputs":{"regex":"(?:a|b)*a(?:a|b){24}"}`, "structured_output", "structured_outputs", true},
		{"empty choice", &loraplexv1.SamplingParams{StructuredOutput: &loraplexv1.StructuredOutput{Kind: &loraplexv1.StructuredOutput_Choice{Choice: &loraplexv1.Choices{}}}},
			"", "structured_output", "", true},
		{"schema not JSON", &loraplexv1.SamplingParams{StructuredOutput: jsonSchema(`{"type":`)}, "", "structured_output", "", true},
		{"json_object false", &loraplexv1.SamplingParams{StructuredOutput: &loraplexv1.StructuredOutput{Kind: &loraplexv1.StructuredOutput_JsonObject{}}}, "", "structured_output", "", true},
		{"min_tokens with a structure", &loraplexv1.SamplingParams{MinTokens: 3, StructuredOutput: jsonSchema(`{"type":"object"}`)}, `"min_tokens":3,"guided_json":{"type":"object"}`, "min_tokens", "min_tokens", false},
	}
	for _, tc := range cases {
		tc.params.MaxTokens = 4
		start := time.Now()
		_, err := generateAll(t, ts, &loraplexv1.GenerateRequest{Model: demo.Name, Prompt: &loraplexv1.GenerateRequest_Text{Text: "x"}, Params: tc.params})
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("%s: refused after %v", tc.name, took)
		}
		st, _ := status.FromError(err)
		if st.Code() != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", tc.name, err)
			continue
		}
		var field string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
				field = br.GetFieldViolations()[0].GetField()
			}
		}
		if field != tc.grpcField {
			t.Errorf("%s: BadRequest field %q, want %q", tc.name, field, tc.grpcField)
		}
		if tc.http == "" {
			continue // gRPC's own cases (HTTP decodes these fields as JSON, with its own messages)
		}
		resp, err := http.Post(srv.URL+"/v1/completions", "application/json",
			strings.NewReader(`{"model":"`+demo.Name+`","prompt":"x","max_tokens":4,`+tc.http+`}`))
		if err != nil {
			t.Fatal(err)
		}
		var env struct {
			Error struct {
				Message string `json:"message"`
				Param   string `json:"param"`
			} `json:"error"`
		}
		json.NewDecoder(resp.Body).Decode(&env)
		resp.Body.Close()
		if resp.StatusCode != 400 || env.Error.Param != tc.httpField {
			t.Errorf("%s: HTTP %d param %q, want 400 %q", tc.name, resp.StatusCode, env.Error.Param, tc.httpField)
		}
		want, got := env.Error.Message, st.Message()
		if tc.structured {
			want, got = strings.TrimPrefix(want, tc.httpField+": "), strings.TrimPrefix(got, tc.grpcField+": ")
		}
		if got != want {
			t.Errorf("%s: gRPC says %q, HTTP %q", tc.name, got, want)
		}
	}
}
