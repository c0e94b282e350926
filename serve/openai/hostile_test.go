package openai_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/serve"
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
		{"logit_bias out of vocab", "/v1/completions", `{` + ok + `,"logit_bias":{"320":10}}`, 400, "logit_bias", auth},
		{"logit_bias above 100", "/v1/completions", `{` + ok + `,"logit_bias":{"5":100.5}}`, 400, "logit_bias", auth},
		{"logit_bias key not an id", "/v1/completions", `{` + ok + `,"logit_bias":{"05":1}}`, 400, "logit_bias", auth},
		{"logit_bias not a number", "/v1/completions", `{` + ok + `,"logit_bias":{"5":"1"}}`, 400, "logit_bias", auth},
		{"prompt_logprobs 21", "/v1/completions", `{` + ok + `,"prompt_logprobs":21}`, 400, "prompt_logprobs", auth},
		{"prompt_logprobs streamed", "/v1/completions", `{` + ok + `,"prompt_logprobs":1,"stream":true}`, 400, "prompt_logprobs", auth},
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

// send makes a request with header pairs (a "Host" pair sets the Host header) and returns
// the status, the response headers and the body.
func send(t testing.TB, method, url, path, body string, header ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
		} else {
			req.Header.Add(header[i], header[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// jsonList is a JSON array of n copies of item.
func jsonList(item string, n int) string {
	return "[" + strings.TrimSuffix(strings.Repeat(item+",", n), ",") + "]"
}

// Every list a client sends is bounded before any work, and a prompt text too long to fit
// max-model-len tokens is refused before it is tokenized: each is a 400 that names the field
// and the limit, and the server serves the next request as before.
func TestRequestLimits(t *testing.T) {
	e, tmpl := demoEngine(t)
	srv := newServer(t, e, openai.Options{ChatTemplate: tmpl})
	tooLong := strings.Repeat("a", e.MaxPromptBytes()+1)
	msg := `{"role":"user","content":"hi"}`
	tool := `{"type":"function","function":{"name":"f","parameters":{}}}`
	bias := make([]string, serve.MaxLogitBias+1)
	for i := range bias {
		bias[i] = fmt.Sprintf(`"%d":1`, i)
	}
	cases := []struct {
		name, path, body, param, says string
	}{
		{"prompt text beyond the byte bound", "/v1/completions", `{"prompt":"` + tooLong + `","max_tokens":1}`, "prompt", "bytes"},
		{"one prompt of a batch beyond it", "/v1/completions", `{"prompt":["hi","` + tooLong + `"],"max_tokens":1}`, "prompt", "bytes"},
		{"chat beyond it", "/v1/chat/completions", `{"messages":[{"role":"user","content":"` + tooLong + `"}]}`, "messages", "bytes"},
		{"tokenize beyond it", "/tokenize", `{"prompt":"` + tooLong + `"}`, "prompt", "bytes"},
		{"too many stop strings", "/v1/completions", `{"prompt":"hi","max_tokens":1,"stop":` + jsonList(`"x"`, serve.MaxStopStrings+1) + `}`, "stop", "at most"},
		{"a million stop strings", "/v1/completions", `{"prompt":"hi","max_tokens":1,"stop":` + jsonList(`"x"`, 1_000_000) + `}`, "stop", "at most"},
		{"a too long stop string", "/v1/completions", `{"prompt":"hi","max_tokens":1,"stop":"` + strings.Repeat("x", serve.MaxStopStringBytes+1) + `"}`, "stop", "at most"},
		{"too many stop_token_ids", "/v1/completions", `{"prompt":"hi","max_tokens":1,"stop_token_ids":` + jsonList("1", serve.MaxStopTokenIDs+1) + `}`, "stop_token_ids", "at most"},
		{"too many logit_bias entries", "/v1/completions", `{"prompt":"hi","max_tokens":1,"logit_bias":{` + strings.Join(bias, ",") + `}}`, "logit_bias", "at most"},
		{"too many messages", "/v1/chat/completions", `{"max_tokens":1,"messages":` + jsonList(msg, serve.MaxMessages+1) + `}`, "messages", "at most"},
		{"too many messages to tokenize", "/tokenize", `{"messages":` + jsonList(msg, serve.MaxMessages+1) + `}`, "messages", "at most"},
		{"too many tools", "/v1/chat/completions", `{"max_tokens":1,"messages":[` + msg + `],"tools":` + jsonList(tool, serve.MaxTools+1) + `}`, "tools", "at most"},
		{"too many prompts", "/v1/completions", `{"max_tokens":1,"prompt":` + jsonList(`"hi"`, 17) + `}`, "prompt", "at most"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, body := post(t, srv.URL, c.path, c.body)
			env := checkError(t, st, body, 400, c.param)
			if !strings.Contains(env.Error.Message, c.says) {
				t.Errorf("message %q does not name the limit (%q)", env.Error.Message, c.says)
			}
		})
	}
	if st, body := post(t, srv.URL, "/v1/completions", `{"prompt":"hi","max_tokens":2,"stop":["x","y"]}`); st != 200 {
		t.Errorf("valid request after the limits: %d %s", st, body)
	}
}

// Without an API key a browser cannot drive the API: a foreign Origin, or a Host that is a DNS
// name the server does not answer to (a DNS-rebinding page's own), is a 403, and a POST body
// not declared application/json a 415. Direct clients, Kubernetes probes and Prometheus (Host:
// <pod IP>), loopback names and the allowed origins and hosts get through.
func TestBrowsersCannotDriveTheAPI(t *testing.T) {
	e := fixtureEngine(t, "llama")
	srv := newServer(t, e, openai.Options{AllowedOrigins: []string{"https://app.example"}, AllowedHosts: []string{"api.internal"}})
	own := strings.TrimPrefix(srv.URL, "http://")
	port := own[strings.LastIndex(own, ":"):]
	body := `{"model":"a_qv","prompt":[7],"max_tokens":2}`
	js := []string{"Content-Type", "application/json"}
	cases := []struct {
		name, method, path string
		header             []string
		status             int
	}{
		{"plain client", "POST", "/v1/completions", nil, 200},
		{"JSON with charset", "POST", "/v1/completions", []string{"Content-Type", "application/json; charset=utf-8"}, 200},
		{"JSON in capitals", "POST", "/v1/completions", []string{"Content-Type", "Application/JSON"}, 200},
		{"text/plain body", "POST", "/v1/completions", []string{"Content-Type", "text/plain"}, 415},
		{"form body", "POST", "/v1/completions", []string{"Content-Type", "application/x-www-form-urlencoded"}, 415},
		{"no content type", "POST", "/v1/completions", []string{"X-None", "1"}, 415},
		{"foreign host", "POST", "/v1/completions", []string{"Host", "evil.example" + port}, 403},
		{"foreign host, fully qualified", "POST", "/v1/completions", []string{"Host", "EVIL.example." + port}, 403},
		{"foreign host reading models", "GET", "/v1/models", []string{"Host", "evil.example" + port}, 403},
		{"foreign host without port", "POST", "/v1/completions", []string{"Host", "evil.example"}, 403},
		{"localhost", "POST", "/v1/completions", []string{"Host", "localhost" + port}, 200},
		{"a .localhost name", "POST", "/v1/completions", []string{"Host", "app.localhost" + port}, 200},
		{"allowed host", "POST", "/v1/completions", []string{"Host", "API.internal:443"}, 200},
		{"pod IP (probe, scrape)", "POST", "/v1/completions", []string{"Host", "10.1.2.3:8000"}, 200},
		{"IPv6 literal", "POST", "/v1/completions", []string{"Host", "[::1]" + port}, 200},
		{"health with a foreign host", "GET", "/health", []string{"Host", "evil.example" + port}, 200},
		{"foreign origin", "POST", "/v1/completions", []string{"Origin", "http://evil.example"}, 403},
		{"null origin", "POST", "/v1/completions", []string{"Origin", "null"}, 403},
		{"loopback page origin", "POST", "/v1/completions", []string{"Origin", "http://localhost:3000"}, 403},
		{"two origins", "POST", "/v1/completions", []string{"Origin", "https://app.example", "Origin", "http://evil.example"}, 403},
		{"allowed origin", "POST", "/v1/completions", []string{"Origin", "https://app.example"}, 200},
		{"own origin", "POST", "/v1/completions", []string{"Origin", srv.URL}, 200},
		{"foreign origin reading models", "GET", "/v1/models", []string{"Origin", "http://evil.example"}, 403},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := c.header
			if c.method == "POST" && (len(h) == 0 || h[0] != "Content-Type") && c.status != 415 {
				h = append(append([]string{}, js...), h...)
			}
			st, _, b := send(t, c.method, srv.URL, c.path, body, h...)
			if c.status == 200 {
				if st != 200 {
					t.Errorf("status %d, want 200: %s", st, b)
				}
				return
			}
			checkError(t, st, b, c.status, "")
		})
	}

	// With a key the key is the guard, whatever the Host; the Bearer scheme is case-insensitive.
	keyed := newServer(t, e, openai.Options{APIKey: testKey})
	for _, scheme := range []string{"Bearer", "bearer", "BEARER"} {
		st, _, b := send(t, "POST", keyed.URL, "/v1/completions", body, "Content-Type", "application/json",
			"Authorization", scheme+" "+testKey, "Host", "api.example.com")
		if st != 200 {
			t.Errorf("%s key via a DNS name: %d %s", scheme, st, b)
		}
	}
	st, _, b := send(t, "POST", keyed.URL, "/v1/completions", body, "Content-Type", "text/plain", "Authorization", "Bearer "+testKey)
	checkError(t, st, b, 415, "")
}
