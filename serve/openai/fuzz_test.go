package openai_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/openai"
)

// FuzzCompletionRequest throws request bodies at /v1/completions on the demo model (which has
// a tokenizer, so text prompts and stop strings are reachable). No body may cause a panic or a
// 5xx; every non-200 answer must be an OpenAI error envelope.
func FuzzCompletionRequest(f *testing.F) {
	for _, s := range []string{
		`{"prompt":"hi","max_tokens":3}`,
		`{"prompt":[1,2,3],"max_tokens":2,"temperature":0,"logprobs":2,"return_token_ids":true}`,
		`{"prompt":["a","b"],"n":2,"max_tokens":2,"seed":5,"stop":["x","y"]}`,
		`{"prompt":[[1],[2,3]],"max_tokens":2,"stream":true,"stream_options":{"include_usage":true}}`,
		`{"prompt":"<|im_start|>","max_tokens":4,"top_k":5,"top_p":0.5,"min_p":0.1,"repetition_penalty":1.3,"presence_penalty":1,"frequency_penalty":-1}`,
		`{"prompt":"x","max_tokens":4,"min_tokens":2,"stop_token_ids":[257],"skip_special_tokens":false,"add_special_tokens":false}`,
		`{"prompt":"x","max_tokens":1e400}`, `{"prompt":null}`, `{"prompt":[-5]}`, `{"prompt":"\ud800"}`,
		`{"model":"nope","prompt":"x"}`, `{`, `[]`, `""`, `{"prompt":"x","stop":""}`, `{"prompt":"x","seed":-1,"max_tokens":1}`,
		`{"prompt":"x","logprobs":0,"max_tokens":1,"return_tokens_as_token_ids":true}`,
		`{"prompt":"hello","echo":true,"logprobs":3,"max_tokens":0}`, `{"prompt":[1,2,3],"echo":true,"logprobs":1,"max_tokens":2,"stream":true}`,
		`{"prompt":"x","max_tokens":0}`, `{"prompt":"ab","prompt_logprobs":2,"max_tokens":1,"n":2}`,
		`{"prompt":"x","max_tokens":2,"logit_bias":{"5":100,"6":-100}}`, `{"prompt":"x","logit_bias":{"70000":1}}`,
		`{"prompt":"x","max_tokens":8,"response_format":{"type":"json_object"}}`,
		`{"prompt":"x","max_tokens":8,"response_format":{"type":"json_schema","json_schema":{"name":"p","schema":{"type":"object","properties":{"a":{"enum":[1,"b"]}},"required":["a"]}}}}`,
		`{"prompt":"x","max_tokens":4,"guided_regex":"[ab]{2}c?"}`, `{"prompt":"x","max_tokens":4,"guided_choice":["yes","no"]}`,
		`{"prompt":"x","max_tokens":4,"guided_json":"{\"type\":\"boolean\"}"}`,
		`{"prompt":"x","max_tokens":4,"structured_outputs":{"json":{"type":"array","items":{"type":"null"},"maxItems":2}}}`,
		`{"prompt":"x","max_tokens":4,"structured_outputs":{"choice":["a"],"regex":"b"}}`, `{"prompt":"x","guided_grammar":"r"}`,
	} {
		f.Add([]byte(s))
	}
	// A short context keeps every accepted request cheap.
	e, _ := demoEngineWith(f, serve.Options{MaxModelLen: 48, MaxNumSeqs: 4, MaxBatchedTokens: 64})
	h := openai.New(e, openai.Options{MaxBodyBytes: 1 << 16})
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := serveFuzzBody(t, h, "/v1/completions", body)
		if rec.Code == http.StatusOK && rec.Header().Get("Content-Type") == "application/json" && !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("200 with invalid JSON: %s", rec.Body)
		}
	})
}
