package openai_test

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/testengine"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/openai"
)

// routerEngine serves the llama fixture with its adapters and every fixture router; the
// adapters folder and the routers folder are adapter roots.
func routerEngine(t testing.TB, opt serve.Options) (*serve.Engine, []fixtureCase) {
	t.Helper()
	opt.MaxNumSeqs, opt.MaxBatchedTokens, opt.MaxModelLen, opt.Logger = 8, 128, 128, quiet
	opt.AdapterRoots = []string{filepath.Join(fixtureDir("llama"), "adapters"), fixture.RoutersRoot()}
	e := testengine.New(t, "llama", opt)
	return e, testengine.LoadRouters(t, e, "llama")
}

// bundleExperts reads a fixture router's expert list from its router.json.
func bundleExperts(t testing.TB, c fixtureCase) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixture.RoutersRoot(), c.Router, "router.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rj struct {
		Experts []string `json:"experts"`
	}
	if err := json.Unmarshal(b, &rj); err != nil {
		t.Fatal(err)
	}
	return rj.Experts
}

// checkTrace checks a choice's expert trace (one entry per token, one expert or "" per layer of
// the two-layer fixture, each one of the router's experts) and its summary (the shares of the
// (token, layer) pairs, summing to 1).
func checkTrace(t *testing.T, what string, trace [][]string, summary map[string]float64, tokens int, experts []string) {
	t.Helper()
	if len(trace) != tokens {
		t.Errorf("%s: %d trace entries for %d tokens", what, len(trace), tokens)
	}
	count := map[string]int{}
	for _, layers := range trace {
		if len(layers) != 2 {
			t.Errorf("%s: trace entry %q, want one per layer (2)", what, layers)
		}
		for _, x := range layers {
			if x != "" && !slices.Contains(experts, x) {
				t.Errorf("%s: expert %q is not one of %v", what, x, experts)
			}
			count[x]++
		}
	}
	if summary == nil {
		return
	}
	sum := 0.0
	for x, f := range summary {
		sum += f
		if want := float64(count[x]) / float64(2*len(trace)); math.Abs(f-want) > 1e-9 {
			t.Errorf("%s: summary[%q] = %v, want %v", what, x, f, want)
		}
	}
	if len(summary) != len(count) || (len(trace) > 0 && math.Abs(sum-1) > 1e-9) {
		t.Errorf("%s: summary %v for counts %v", what, summary, count)
	}
}

func unmarshalExtra[T any](t *testing.T, raw string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		t.Fatalf("extra field %q: %v", raw, err)
	}
	return v
}

// TestRouterCompletionsMatchReference drives the real server with the official client: every
// router case of the PyTorch reference, named by its router as the model, gives exactly the
// reference's greedy tokens, in one response and streamed, with an expert trace of one entry
// per token; the streamed trace equals the whole one and the summary arrives in the last chunk.
func TestRouterCompletionsMatchReference(t *testing.T) {
	e, cases := routerEngine(t, serve.Options{})
	srv := newServer(t, e, openai.Options{APIKey: testKey})
	client := newClient(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	extra := []option.RequestOption{option.WithJSONSet("return_token_ids", true), option.WithJSONSet("ignore_eos", true),
		option.WithJSONSet("expert_trace", true)}
	for _, c := range cases {
		want, experts := c.Tokens(), bundleExperts(t, c)
		resp, err := client.Completions.New(ctx, greedy(c), extra...)
		if err != nil {
			t.Fatalf("%s %v: %v", c.Adapter, c.Prompt, err)
		}
		ch := resp.Choices[0]
		if got := extraInts(t, ch.JSON.ExtraFields["token_ids"].Raw()); !slices.Equal(got, want) {
			t.Errorf("%s %v: tokens %v, want %v", c.Adapter, c.Prompt, got, want)
		}
		if resp.Model != c.Adapter || ch.FinishReason != "length" {
			t.Errorf("%s: model %q finish %q", c.Adapter, resp.Model, ch.FinishReason)
		}
		trace := unmarshalExtra[[][]string](t, ch.JSON.ExtraFields["expert_trace"].Raw())
		summary := unmarshalExtra[map[string]float64](t, ch.JSON.ExtraFields["expert_summary"].Raw())
		checkTrace(t, c.Adapter, trace, summary, len(want), experts)

		stream := client.Completions.NewStreaming(ctx, greedy(c), extra...)
		var got []int
		var strace [][]string
		var ssummary map[string]float64
		for stream.Next() {
			chunk := stream.Current()
			if len(chunk.Choices) == 0 {
				continue
			}
			sc := chunk.Choices[0]
			got = append(got, extraInts(t, sc.JSON.ExtraFields["token_ids"].Raw())...)
			strace = append(strace, unmarshalExtra[[][]string](t, sc.JSON.ExtraFields["expert_trace"].Raw())...)
			if s, ok := sc.JSON.ExtraFields["expert_summary"]; ok && s.Raw() != "" {
				if sc.FinishReason == "" {
					t.Errorf("%s: expert_summary in a chunk before the last", c.Adapter)
				}
				ssummary = unmarshalExtra[map[string]float64](t, s.Raw())
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		stream.Close()
		if !slices.Equal(got, want) {
			t.Errorf("stream %s %v: tokens %v, want %v", c.Adapter, c.Prompt, got, want)
		}
		checkTrace(t, c.Adapter+" streamed", strace, ssummary, len(want), experts)
		if ssummary == nil {
			t.Errorf("%s: no expert_summary in the stream", c.Adapter)
		}
		if !slices.EqualFunc(strace, trace, slices.Equal) {
			t.Errorf("%s: streamed trace %v, whole %v", c.Adapter, strace, trace)
		}
	}

	// Without expert_trace, a routed response carries no trace fields.
	c := cases[0]
	resp, err := client.Completions.New(ctx, greedy(c), option.WithJSONSet("return_token_ids", true))
	if err != nil {
		t.Fatal(err)
	}
	if got := extraInts(t, resp.Choices[0].JSON.ExtraFields["token_ids"].Raw()); !slices.Equal(got, c.Tokens()) {
		t.Errorf("untraced %s: tokens %v, want %v", c.Adapter, got, c.Tokens())
	}
	if _, ok := resp.Choices[0].JSON.ExtraFields["expert_trace"]; ok {
		t.Errorf("untraced response has an expert_trace: %s", resp.RawJSON())
	}

	// n = 2 with a batch of two prompts: every choice has its own trace.
	st, b := post(t, srv.URL, "/v1/completions", `{"model":"`+c.Adapter+`","prompt":[[7,8],[9]],"n":2,"max_tokens":3,"ignore_eos":true,"expert_trace":true}`,
		"Authorization", "Bearer "+testKey)
	if st != 200 {
		t.Fatalf("batch: %d %s", st, b)
	}
	var batch struct {
		Choices []struct {
			ExpertTrace   [][]string         `json:"expert_trace"`
			ExpertSummary map[string]float64 `json:"expert_summary"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(b, &batch); err != nil || len(batch.Choices) != 4 {
		t.Fatalf("batch: %v %s", err, b)
	}
	for i, ch := range batch.Choices {
		checkTrace(t, "batch choice", ch.ExpertTrace, ch.ExpertSummary, 3, bundleExperts(t, c))
		if ch.ExpertSummary == nil {
			t.Errorf("batch choice %d has no summary", i)
		}
	}
}

// TestRouterModels: /v1/models lists every router with its kind, its experts and the base model
// as parent and root; adapters and the base model say what they are.
func TestRouterModels(t *testing.T) {
	e, cases := routerEngine(t, serve.Options{})
	srv := newServer(t, e, openai.Options{})
	st, b := get(t, srv.URL+"/v1/models")
	if st != 200 {
		t.Fatalf("models %d %s", st, b)
	}
	var ml struct {
		Data []struct {
			ID      string   `json:"id"`
			Kind    string   `json:"loraplex_kind"`
			Experts []string `json:"experts"`
			Parent  *string  `json:"parent"`
			Root    string   `json:"root"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &ml); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, m := range ml.Data {
		kinds[m.ID] = m.Kind
		if m.Kind == "router" {
			i := slices.IndexFunc(cases, func(c fixtureCase) bool { return c.Adapter == m.ID })
			if i < 0 {
				t.Errorf("unknown router %q listed", m.ID)
				continue
			}
			if !slices.Equal(m.Experts, bundleExperts(t, cases[i])) || m.Parent == nil || *m.Parent != "llama" || m.Root != "llama" {
				t.Errorf("router card %+v", m)
			}
		} else if m.Experts != nil {
			t.Errorf("%s (%s) lists experts", m.ID, m.Kind)
		}
	}
	for _, c := range cases {
		if kinds[c.Adapter] != "router" {
			t.Errorf("router %q: kind %q", c.Adapter, kinds[c.Adapter])
		}
	}
	if kinds["llama"] != "base" || kinds["a_qv"] != "adapter" {
		t.Errorf("kinds %v", kinds)
	}
}

// TestExpertTraceNeedsRouter: an expert trace for the base model, an adapter or an unknown name
// is a 400 about expert_trace, in completions and in chat.
func TestExpertTraceNeedsRouter(t *testing.T) {
	e, _ := routerEngine(t, serve.Options{})
	srv := newServer(t, e, openai.Options{})
	for _, model := range []string{"", "llama", "a_qv", "nope"} {
		st, b := post(t, srv.URL, "/v1/completions", `{"model":"`+model+`","prompt":[1,2],"max_tokens":2,"expert_trace":true}`)
		checkError(t, st, b, 400, "expert_trace")
	}
	st, b := post(t, srv.URL, "/v1/completions", `{"model":"top1","prompt":[1,2],"max_tokens":2,"expert_trace":"yes"}`)
	checkError(t, st, b, 400, "expert_trace")
	de, ct := demoEngine(t)
	dsrv := newServer(t, de, openai.Options{ChatTemplate: ct})
	st, b = post(t, dsrv.URL, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"expert_trace":true}`)
	checkError(t, st, b, 400, "expert_trace")
}

// TestRouterLoadUnload: /v1/load_router and /v1/unload_router are gated by the runtime-updates
// switch and the adapter roots like the adapter endpoints; bad input gets the matching 4xx with
// the field named; a router loaded at runtime serves the reference tokens and disappears when
// unloaded.
func TestRouterLoadUnload(t *testing.T) {
	e, cases := routerEngine(t, serve.Options{})
	off := newServer(t, e, openai.Options{})
	top1 := filepath.Join(fixture.RoutersRoot(), "llama", "top1")
	for _, path := range []string{"/v1/load_router", "/v1/unload_router"} {
		st, b := post(t, off.URL, path, `{"router_name":"mix","router_path":"`+top1+`"}`)
		checkError(t, st, b, 403, "")
	}

	srv := newServer(t, e, openai.Options{AllowRuntimeAdapterUpdates: true})
	small := testengine.New(t, "llama", serve.Options{MaxLoRAs: 3, Logger: quiet, AdapterRoots: []string{fixture.RoutersRoot()}})
	smallSrv := newServer(t, small, openai.Options{AllowRuntimeAdapterUpdates: true})
	for _, tc := range []struct {
		url, body string
		status    int
		param     string
	}{
		{srv.URL, `{"router_path":"` + top1 + `"}`, 400, "router_name"},
		{srv.URL, `{"router_name":"mix"}`, 400, "router_path"},
		{srv.URL, `{"router_name":5}`, 400, "router_name"},
		{srv.URL, `{"router_name":"mix","router_path":"` + t.TempDir() + `"}`, 403, "router_path"},
		{srv.URL, `{"router_name":"mix","router_path":"` + filepath.Join(fixture.RoutersRoot(), "nope") + `"}`, 404, "router_path"},
		// A folder inside a root that is no bundle.
		{srv.URL, `{"router_name":"mix","router_path":"` + filepath.Join(fixtureDir("llama"), "adapters", "a_qv") + `"}`, 404, "router_path"},
		{srv.URL, `{"router_name":"../x","router_path":"` + top1 + `"}`, 400, "router_name"},
		{srv.URL, `{"router_name":"a_qv","router_path":"` + top1 + `"}`, 400, "router_name"},
		{srv.URL, `{"router_name":"llama","router_path":"` + top1 + `"}`, 400, "router_name"},
		// Four experts, three device slots.
		{smallSrv.URL, `{"router_name":"mix","router_path":"` + top1 + `"}`, 422, "router_path"},
	} {
		st, b := post(t, tc.url, "/v1/load_router", tc.body)
		checkError(t, st, b, tc.status, tc.param)
	}
	st, b := post(t, srv.URL, "/v1/unload_router", `{"router_name":"mix"}`)
	checkError(t, st, b, 404, "router_name")
	st, b = post(t, srv.URL, "/v1/unload_router", `{}`)
	checkError(t, st, b, 400, "router_name")

	// Load top1's bundle as "mix": it routes exactly like top1.
	st, b = post(t, srv.URL, "/v1/load_router", `{"router_name":"mix","router_path":"`+top1+`"}`)
	if st != 200 || string(b) != "Success: router 'mix' added successfully." {
		t.Fatalf("load: %d %s", st, b)
	}
	var ref fixtureCase
	for _, c := range cases {
		if c.Adapter == "top1" {
			ref = c
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := newClient(srv.URL)
	ref.Adapter = "mix"
	resp, err := client.Completions.New(ctx, greedy(ref), option.WithJSONSet("return_token_ids", true), option.WithJSONSet("ignore_eos", true),
		option.WithJSONSet("expert_trace", true))
	if err != nil {
		t.Fatal(err)
	}
	if got := extraInts(t, resp.Choices[0].JSON.ExtraFields["token_ids"].Raw()); !slices.Equal(got, ref.Tokens()) {
		t.Errorf("mix: tokens %v, want %v", got, ref.Tokens())
	}
	checkTrace(t, "mix", unmarshalExtra[[][]string](t, resp.Choices[0].JSON.ExtraFields["expert_trace"].Raw()), nil, len(ref.Steps), bundleExperts(t, ref))
	page, err := client.Models.List(ctx)
	if err != nil || !slices.ContainsFunc(page.Data, func(m oai.Model) bool { return m.ID == "mix" }) {
		t.Errorf("models after load: %v %v", page, err)
	}

	st, b = post(t, srv.URL, "/v1/unload_router", `{"router_name":"mix"}`)
	if st != 200 || string(b) != "Success: router 'mix' removed successfully." {
		t.Fatalf("unload: %d %s", st, b)
	}
	st, b = post(t, srv.URL, "/v1/completions", `{"model":"mix","prompt":[1,2],"max_tokens":2}`)
	checkError(t, st, b, 404, "model")
	st, b = post(t, srv.URL, "/v1/unload_router", `{"router_name":"mix"}`)
	checkError(t, st, b, 404, "router_name")
}
