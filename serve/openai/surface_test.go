package openai_test

import (
	"testing"

	"github.com/loraplex/loraplex/serve/openai"
)

// A field that would change what is generated and that the server does not implement is a
// 400 naming it; set to null or its neutral value it changes nothing and is accepted, and
// unknown harmless fields are ignored, as OpenAI does.
func TestSemanticFieldsRefused(t *testing.T) {
	e, ct := demoEngine(t)
	srv := newServer(t, e, openai.Options{ChatTemplate: ct})
	cmpl, chat := `"prompt":"hi","max_tokens":1`, `"messages":[{"role":"user","content":"hi"}],"max_tokens":1`
	for _, c := range []struct{ path, body, param string }{
		{"/v1/completions", cmpl + `,"use_beam_search":true`, "use_beam_search"},
		{"/v1/completions", cmpl + `,"include_stop_str_in_output":true`, "include_stop_str_in_output"},
		{"/v1/completions", cmpl + `,"truncate_prompt_tokens":5`, "truncate_prompt_tokens"},
		{"/v1/completions", cmpl + `,"allowed_token_ids":[1,2]`, "allowed_token_ids"},
		{"/v1/completions", cmpl + `,"bad_words":["x"]`, "bad_words"},
		{"/v1/completions", cmpl + `,"logits_processors":["x"]`, "logits_processors"},
		{"/v1/chat/completions", chat + `,"use_beam_search":true`, "use_beam_search"},
		{"/v1/chat/completions", chat + `,"echo":true`, "echo"},
		{"/v1/chat/completions", chat + `,"chat_template":"{{ messages }}"`, "chat_template"},
		{"/v1/chat/completions", chat + `,"modalities":["text","audio"]`, "modalities"},
		{"/v1/chat/completions", chat + `,"audio":{"voice":"alloy","format":"wav"}`, "audio"},
	} {
		st, body := post(t, srv.URL, c.path, "{"+c.body+"}")
		checkError(t, st, body, 400, c.param)
	}
	for _, c := range []struct{ path, body string }{
		{"/v1/completions", cmpl + `,"use_beam_search":false,"bad_words":[],"truncate_prompt_tokens":null,"user":"u","store":true`},
		{"/v1/chat/completions", chat + `,"modalities":[ "text" ],"echo":false,"audio":null,"metadata":{"k":"v"},"service_tier":"auto"`},
	} {
		if st, body := post(t, srv.URL, c.path, "{"+c.body+"}"); st != 200 {
			t.Errorf("%s %s: %d %s", c.path, c.body, st, body)
		}
	}
}
