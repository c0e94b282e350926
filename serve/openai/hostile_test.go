package openai_test

import (
	"strings"
	"testing"

	"github.com/loraplex/loraplex/serve/openai"
)

// TestHostileInput sends broken, mistyped and out-of-range requests; each must get the right
// status and a well-formed OpenAI error naming the field where there is one.
func TestHostileInput(t *testing.T) {
	e := fixtureEngine(t, "llama")
	srv := newServer(t, e, openai.Options{APIKey: testKey, MaxBodyBytes: 4096})
	auth := []string{"Authorization", "Bearer " + testKey}
	ok := `"model":"a_qv","prompt":[7],"max_tokens":2`
	cases := []struct {
		name, path, body string
		status           int
		param            string
		header           []string
	}{
		{"malformed", "/v1/completions", `{"prompt":[1,2}`, 400, "", auth},
		{"truncated", "/v1/completions", `{"prompt":[1,2`, 400, "", auth},
		{"empty body", "/v1/completions", ``, 400, "", auth},
		{"array body", "/v1/completions", `[1,2]`, 400, "", auth},
		{"string body", "/v1/completions", `"hi"`, 400, "", auth},
		{"trailing garbage", "/v1/completions", `{` + ok + `} x`, 400, "", auth},
		{"max_tokens string", "/v1/completions", `{` + ok + `,"max_tokens":"5"}`, 400, "max_tokens", auth},
		{"temperature string", "/v1/completions", `{` + ok + `,"temperature":"hot"}`, 400, "temperature", auth},
		{"stream string", "/v1/completions", `{` + ok + `,"stream":"yes"}`, 400, "stream", auth},
		{"prompt object", "/v1/completions", `{"prompt":{"a":1}}`, 400, "prompt", auth},
		{"prompt floats", "/v1/completions", `{"prompt":[1.5,2]}`, 400, "prompt", auth},
		{"prompt mixed", "/v1/completions", `{"prompt":[1,"a"]}`, 400, "prompt", auth},
		{"prompt missing", "/v1/completions", `{"model":"llama"}`, 400, "prompt", auth},
		{"prompt empty", "/v1/completions", `{"prompt":[]}`, 400, "prompt", auth},
		{"prompt empty in batch", "/v1/completions", `{"prompt":[[1],[]]}`, 400, "prompt", auth},
		{"text without tokenizer", "/v1/completions", `{"prompt":"hello"}`, 400, "prompt", auth},
		{"stop number", "/v1/completions", `{` + ok + `,"stop":5}`, 400, "stop", auth},
		{"stop without tokenizer", "/v1/completions", `{` + ok + `,"stop":"x"}`, 400, "stop", auth},
		{"stop_token_ids strings", "/v1/completions", `{` + ok + `,"stop_token_ids":["a"]}`, 400, "stop_token_ids", auth},
		{"n fractional", "/v1/completions", `{` + ok + `,"n":1.5}`, 400, "n", auth},
		{"logprobs bool", "/v1/completions", `{` + ok + `,"logprobs":true}`, 400, "logprobs", auth},
		{"nested type", "/v1/completions", `{` + ok + `,"stream_options":{"include_usage":"x"}}`, 400, "stream_options.include_usage", auth},
		{"huge max_tokens", "/v1/completions", `{` + ok + `,"max_tokens":1e300}`, 400, "max_tokens", auth},
		{"big max_tokens", "/v1/completions", `{` + ok + `,"max_tokens":99999999999}`, 400, "max_tokens", auth},
		{"huge temperature", "/v1/completions", `{` + ok + `,"temperature":1e400}`, 400, "temperature", auth},
		{"huge seed", "/v1/completions", `{` + ok + `,"seed":1e30}`, 400, "seed", auth},
		{"huge token id", "/v1/completions", `{"prompt":[1e30]}`, 400, "prompt", auth},
		{"negative temperature", "/v1/completions", `{` + ok + `,"temperature":-0.5}`, 400, "temperature", auth},
		{"top_p zero", "/v1/completions", `{` + ok + `,"top_p":0}`, 400, "top_p", auth},
		{"top_p above one", "/v1/completions", `{` + ok + `,"top_p":1.5}`, 400, "top_p", auth},
		{"top_k -2", "/v1/completions", `{` + ok + `,"top_k":-2}`, 400, "top_k", auth},
		{"min_p 2", "/v1/completions", `{` + ok + `,"min_p":2}`, 400, "min_p", auth},
		{"presence 3", "/v1/completions", `{` + ok + `,"presence_penalty":3}`, 400, "presence_penalty", auth},
		{"repetition 0", "/v1/completions", `{` + ok + `,"repetition_penalty":0}`, 400, "repetition_penalty", auth},
		{"logprobs 21", "/v1/completions", `{` + ok + `,"logprobs":21}`, 400, "logprobs", auth},
		{"max_tokens 0", "/v1/completions", `{` + ok + `,"max_tokens":0}`, 400, "max_tokens", auth},
		{"max_tokens -1", "/v1/completions", `{` + ok + `,"max_tokens":-1}`, 400, "max_tokens", auth},
		{"min_tokens > max", "/v1/completions", `{` + ok + `,"min_tokens":5}`, 400, "min_tokens", auth},
		{"n 0", "/v1/completions", `{` + ok + `,"n":0}`, 400, "n", auth},
		{"n 1000", "/v1/completions", `{` + ok + `,"n":1000}`, 400, "n", auth},
		{"echo with logprobs", "/v1/completions", `{` + ok + `,"echo":true,"logprobs":1}`, 400, "echo", auth},
		{"logit_bias", "/v1/completions", `{` + ok + `,"logit_bias":{"5":10}}`, 400, "logit_bias", auth},
		{"out of vocab", "/v1/completions", `{"prompt":[320]}`, 400, "prompt", auth},
		{"negative id", "/v1/completions", `{"prompt":[-1]}`, 400, "prompt", auth},
		{"stop id out of vocab", "/v1/completions", `{` + ok + `,"stop_token_ids":[999]}`, 400, "stop_token_ids", auth},
		{"prompt too long", "/v1/completions", `{"prompt":[` + strings.Repeat("1,", 199) + `1]}`, 400, "prompt", auth},
		{"context overflow", "/v1/completions", `{"prompt":[1,2,3],"max_tokens":126}`, 400, "max_tokens", auth},
		{"unknown model", "/v1/completions", `{"model":"nope","prompt":[7]}`, 404, "model", auth},
		{"unknown model stream", "/v1/completions", `{"model":"nope","prompt":[7],"stream":true}`, 404, "model", auth},
		{"oversized body", "/v1/completions", `{"prompt":[` + strings.Repeat("1,", 3000) + `1]}`, 413, "", auth},
		{"bad api key", "/v1/completions", `{` + ok + `}`, 401, "", []string{"Authorization", "Bearer nope"}},
		{"no api key", "/v1/completions", `{` + ok + `}`, 401, "", nil},
		{"unknown path", "/v1/nope", `{}`, 404, "", auth},
		{"chat without template", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`, 400, "messages", auth},
		{"chat messages wrong type", "/v1/chat/completions", `{"messages":"hi"}`, 400, "messages", auth},
		{"tokenize without tokenizer", "/tokenize", `{"prompt":"hi"}`, 400, "prompt", auth},
		{"tokenize unknown model", "/tokenize", `{"model":"nope","prompt":"hi"}`, 404, "model", auth},
		{"load adapter disabled", "/v1/load_lora_adapter", `{"lora_name":"x","lora_path":"/tmp"}`, 403, "", auth},
		{"unload adapter disabled", "/v1/unload_lora_adapter", `{"lora_name":"a_qv"}`, 403, "", auth},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, body := post(t, srv.URL, c.path, c.body, c.header...)
			env := checkError(t, st, body, c.status, c.param)
			if c.status == 400 && env.Error.Type != "invalid_request_error" {
				t.Errorf("type %q for a 400", env.Error.Type)
			}
		})
	}
	t.Run("wrong method", func(t *testing.T) {
		st, body := get(t, srv.URL+"/v1/completions")
		checkError(t, st, body, 405, "")
	})
	// A valid request still works after all that.
	if st, body := post(t, srv.URL, "/v1/completions", `{`+ok+`}`, auth...); st != 200 {
		t.Errorf("valid request: %d %s", st, body)
	}
}
