package openai_test

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/serve/openai"
	"github.com/loraplex/loraplex/structured"
)

// Grammars the end-to-end test holds completions to: arithmetic (recursive through
// parentheses) and a JSON-ish object grammar in llama.cpp's json.gbnf style.
const (
	arithGrammar = `# arithmetic over small integers
root   ::= expr
expr   ::= term (("+" | "-") term)*
term   ::= factor (("*" | "/") factor)*
factor ::= [0-9]{1,3} | "(" expr ")"
`
	jsonishGrammar = `root   ::= "{" pair ("," pair){0,3} "}"
object ::= "{" ( pair ("," pair){0,3} )? "}"
pair   ::= string ":" value
value  ::= object | array | string | number | "true" | "false" | "null"
array  ::= "[" ( value ("," value){0,3} )? "]"
string ::= "\"" [a-z ]{0,8} "\""
number ::= "-"? ([0-9] | [1-9] [0-9]{1,3})
`
)

// grammarMatcher is the structured package's recognizer of a grammar, over bytes.
func grammarMatcher(t *testing.T, text string) *structured.Grammar {
	t.Helper()
	v := structured.NewVocab(256, 256, func(id int) ([]byte, bool) { return []byte{byte(id)}, true }, nil)
	g, err := structured.NewCompiler(v).Compile(structured.Spec{Kind: structured.EBNF, Text: text})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// Completions held to a grammar by guided_grammar or structured_outputs.grammar, sent by the
// official client to the demo model sampling hot (near-random text), end only with text the
// grammar derives: the mask, not the model, makes it so. Outputs cut by max_tokens are still
// made of the grammar's characters.
func TestGrammarConstrainsCompletions(t *testing.T) {
	e, _ := demoEngine(t)
	srv := newServer(t, e, openai.Options{APIKey: testKey})
	client := newClient(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	arith, jsonish := grammarMatcher(t, arithGrammar), grammarMatcher(t, jsonishGrammar)
	arithChars := regexp.MustCompile(`^[0-9+\-*/()]*$`)
	stopped := map[string]int{}
	for seed := range int64(8) {
		for _, tc := range []struct {
			name, field string
			value       any
			g           *structured.Grammar
			check       func(string) bool
		}{
			{"arith", "guided_grammar", arithGrammar, arith, func(s string) bool {
				return arithChars.MatchString(s) && strings.Count(s, "(") == strings.Count(s, ")")
			}},
			{"jsonish", "structured_outputs", map[string]any{"grammar": jsonishGrammar}, jsonish, func(s string) bool {
				var m map[string]any
				return json.Unmarshal([]byte(s), &m) == nil
			}},
		} {
			resp, err := client.Completions.New(ctx, oai.CompletionNewParams{
				Model: demo.Name, Prompt: oai.CompletionNewParamsPromptUnion{OfString: oai.String("func main() {")},
				MaxTokens: oai.Int(120), Temperature: oai.Float(1.5), Seed: oai.Int(seed),
			}, option.WithJSONSet(tc.field, tc.value))
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			ch := resp.Choices[0]
			switch {
			case ch.FinishReason == "stop":
				stopped[tc.name]++
				if !tc.g.Matches([]byte(ch.Text)) || !tc.check(ch.Text) {
					t.Errorf("seed %d %s: finished output %q does not parse", seed, tc.name, ch.Text)
				}
			case tc.name == "arith" && !arithChars.MatchString(ch.Text):
				t.Errorf("seed %d %s: cut output %q has characters outside the grammar", seed, tc.name, ch.Text)
			}
		}
	}
	for _, name := range []string{"arith", "jsonish"} {
		if stopped[name] < 3 {
			t.Errorf("%s: only %d of 8 completions finished", name, stopped[name])
		}
	}
}

// A chat completion's guided_grammar holds the assistant's reply to the grammar as it does a
// completion's text.
func TestGrammarConstrainsChat(t *testing.T) {
	e, ct := demoEngine(t)
	srv := newServer(t, e, openai.Options{APIKey: testKey, ChatTemplate: ct})
	client := newClient(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const grammar = `root ::= "The answer is " expr "."
expr ::= [0-9]{1,2} (("+" | "*") [0-9]{1,2}){0,2} | "(" expr ")"`
	g := grammarMatcher(t, grammar)
	finished := 0
	for seed := range int64(4) {
		resp, err := client.Chat.Completions.New(ctx, oai.ChatCompletionNewParams{
			Model:       demo.Name,
			Messages:    []oai.ChatCompletionMessageParamUnion{oai.UserMessage("What is 2+2?")},
			Temperature: oai.Float(1.5), Seed: oai.Int(seed), MaxTokens: oai.Int(60),
		}, option.WithJSONSet("guided_grammar", grammar))
		if err != nil {
			t.Fatal(err)
		}
		ch := resp.Choices[0]
		if ch.FinishReason == "stop" {
			finished++
			if !g.Matches([]byte(ch.Message.Content)) || !strings.HasPrefix(ch.Message.Content, "The answer is ") {
				t.Errorf("seed %d: reply %q does not parse", seed, ch.Message.Content)
			}
		}
	}
	if finished < 2 {
		t.Errorf("only %d of 4 replies finished", finished)
	}
}

// A grammar whose parses multiply (every digit may open a nested factor, so the parser's
// stacks grow exponentially with the digits) is not refusable up front, but each token costs
// bounded work (MaxParserThreads, MaxMaskWork): the request ends within seconds, with text the
// grammar allows so far, and a request beside it is served.
func TestAmbiguousGrammarCostsBoundedTime(t *testing.T) {
	e, _ := demoEngine(t)
	srv := newServer(t, e, openai.Options{})
	const ambiguous = "root::=expr\nexpr::=term((\"+\"|\"-\")term)*\nterm::=factor((\"*\"|\"/\")factor)*\nfactor::=[0-9]{1,3}expr\")\"|"
	body, _ := json.Marshal(map[string]any{"model": demo.Name, "prompt": "1", "max_tokens": 24, "temperature": 1.5, "seed": 1, "guided_grammar": ambiguous})
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		status, resp := post(t, srv.URL, "/v1/completions", string(body))
		var out struct {
			Choices []struct {
				Text string `json:"text"`
			} `json:"choices"`
		}
		if status != 200 || json.Unmarshal(resp, &out) != nil || len(out.Choices) != 1 {
			t.Errorf("ambiguous grammar: %d %s", status, resp)
			return
		}
		if strings.Trim(out.Choices[0].Text, "0123456789+-*/)") != "" {
			t.Errorf("ambiguous grammar: %q has characters outside the grammar", out.Choices[0].Text)
		}
	}()
	status, resp := post(t, srv.URL, "/v1/completions", `{"model":"`+demo.Name+`","prompt":"x","max_tokens":4,"guided_choice":["yes","no"]}`)
	if status != 200 || !strings.Contains(string(resp), `"text":"yes"`) && !strings.Contains(string(resp), `"text":"no"`) {
		t.Errorf("request beside it: %d %s", status, resp)
	}
	<-done
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("took %v", took)
	}
}
