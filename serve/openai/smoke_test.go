package openai_test

import (
	"testing"

	"github.com/loraplex/loraplex/serve/openai"
)

func TestSmoke(t *testing.T) {
	e := fixtureEngine(t, "llama")
	srv := newServer(t, e, openai.Options{})
	st, b := post(t, srv.URL, "/v1/completions", `{"model":"a_qv","prompt":[7],"max_tokens":6,"temperature":0,"ignore_eos":true,"return_token_ids":true,"logprobs":2}`)
	t.Logf("%d %s", st, b)
	st, b = post(t, srv.URL, "/v1/completions", `{"model":"a_qv","prompt":[7],"max_tokens":3,"temperature":0,"stream":true,"stream_options":{"include_usage":true},"return_token_ids":true}`)
	t.Logf("%d %s", st, b)
	st, b = get(t, srv.URL+"/v1/models")
	t.Logf("%d %s", st, b)
	de, ct := demoEngine(t)
	dsrv := newServer(t, de, openai.Options{ChatTemplate: ct})
	st, b = post(t, dsrv.URL, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"seed":1,"logprobs":true,"top_logprobs":1}`)
	t.Logf("%d %s", st, b)
	st, b = post(t, dsrv.URL, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":3,"seed":1,"stream":true}`)
	t.Logf("%d %s", st, b)
	st, b = post(t, dsrv.URL, "/tokenize", `{"messages":[{"role":"user","content":"hi"}]}`)
	t.Logf("%d %s", st, b)
}
