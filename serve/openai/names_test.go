package openai_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3/option"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/testengine"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/openai"
)

// copyDir copies a flat folder of regular files (a fixture adapter) to dst.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range ents {
		b, err := os.ReadFile(filepath.Join(src, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, ent.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// lifecycleServer serves the llama fixture (four adapters loaded) with runtime updates on; its
// adapter directory holds one more adapter, "ondisk", loaded on first use.
func lifecycleServer(t *testing.T) (*serve.Engine, string) {
	t.Helper()
	dir := t.TempDir()
	copyDir(t, filepath.Join(fixtureDir("llama"), "adapters", "d_regex"), filepath.Join(dir, "ondisk"))
	e := testengine.New(t, "llama", serve.Options{MaxNumSeqs: 8, MaxBatchedTokens: 128, MaxModelLen: 128, Logger: quiet,
		AdapterDirs:  []string{dir},
		AdapterRoots: []string{filepath.Join(fixtureDir("llama"), "adapters"), fixture.RoutersRoot()}})
	return e, newServer(t, e, openai.Options{AllowRuntimeAdapterUpdates: true}).URL
}

func adapterJSON(name string) string {
	return jsonString(filepath.Join(fixtureDir("llama"), "adapters", name))
}

var topTwo = jsonString(filepath.Join(fixture.RoutersRoot(), "llama", "top2"))

// A name is served once: loading under a served name is vLLM's 400 unless load_inplace asks to
// replace it; an adapter directory's name cannot become a router's; names follow one rule;
// unloading an adapter that a loaded router uses is a 409 naming the router. All through the
// real HTTP server.
func TestNameLifecycleOverHTTP(t *testing.T) {
	e, url := lifecycleServer(t)

	st, b := post(t, url, "/v1/load_router", `{"router_name":"mix","router_path":`+topTwo+`}`)
	if st != 200 {
		t.Fatalf("load router: %d %s", st, b)
	}
	expert := e.Routers()[0].Experts[0]
	st, b = post(t, url, "/v1/unload_lora_adapter", `{"lora_name":"`+expert+`"}`)
	env := checkError(t, st, b, 409, "lora_name")
	if env.Error.Type != "ConflictError" || !strings.Contains(env.Error.Message, "'mix'") {
		t.Errorf("unloading a router's expert: %s", b)
	}

	// vLLM's refusal, then vLLM's load_inplace.
	st, b = post(t, url, "/v1/load_lora_adapter", `{"lora_name":"a_qv","lora_path":`+adapterJSON("b_all_rslora")+`}`)
	env = checkError(t, st, b, 400, "lora_name")
	if !strings.Contains(env.Error.Message, "The lora adapter 'a_qv' has already been loaded") {
		t.Errorf("loading over a loaded adapter: %s", b)
	}
	st, b = post(t, url, "/v1/load_lora_adapter", `{"lora_name":"a_qv","lora_path":`+adapterJSON("b_all_rslora")+`,"load_inplace":true}`)
	if st != 200 {
		t.Fatalf("load_inplace: %d %s", st, b)
	}
	var ref fixtureCase
	for _, c := range loadCases(t, "llama") {
		if c.Adapter == "b_all_rslora" {
			ref = c
			break
		}
	}
	ref.Adapter = "a_qv"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := newClient(url)
	resp, err := client.Completions.New(ctx, greedy(ref), option.WithJSONSet("return_token_ids", true), option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	if got := extraInts(t, resp.Choices[0].JSON.ExtraFields["token_ids"].Raw()); !slices.Equal(got, ref.Tokens()) {
		t.Errorf("a_qv after replacement: tokens %v, want b_all_rslora's %v", got, ref.Tokens())
	}

	st, b = post(t, url, "/v1/load_router", `{"router_name":"mix","router_path":`+topTwo+`}`)
	checkError(t, st, b, 400, "router_name")
	if st, b = post(t, url, "/v1/load_router", `{"router_name":"mix","router_path":`+topTwo+`,"load_inplace":true}`); st != 200 {
		t.Errorf("router load_inplace: %d %s", st, b)
	}

	// The adapter directory's name stays the adapter's.
	st, b = post(t, url, "/v1/load_router", `{"router_name":"ondisk","router_path":`+topTwo+`}`)
	env = checkError(t, st, b, 400, "router_name")
	if !strings.Contains(env.Error.Message, "adapter directory") {
		t.Errorf("router over an adapter directory's name: %s", b)
	}
	if st, b = post(t, url, "/v1/completions", `{"model":"ondisk","prompt":[1,2],"max_tokens":2}`); st != 200 {
		t.Errorf("the adapter directory's adapter after a refused router: %d %s", st, b)
	}

	// One rule for names, on both load endpoints.
	for _, name := range []string{" x", "x ", "a\u202eb", "a\u200bb", "a\nb", ".x", "a/b", strings.Repeat("n", serve.MaxNameBytes+1)} {
		st, b = post(t, url, "/v1/load_lora_adapter", `{"lora_name":`+jsonString(name)+`,"lora_path":`+adapterJSON("a_qv")+`}`)
		checkError(t, st, b, 400, "lora_name")
		st, b = post(t, url, "/v1/load_router", `{"router_name":`+jsonString(name)+`,"router_path":`+topTwo+`}`)
		checkError(t, st, b, 400, "router_name")
	}

	// Once the router is gone its expert unloads.
	if st, b = post(t, url, "/v1/unload_router", `{"router_name":"mix"}`); st != 200 {
		t.Fatalf("unload router: %d %s", st, b)
	}
	if st, b = post(t, url, "/v1/unload_lora_adapter", `{"lora_name":"`+expert+`"}`); st != 200 {
		t.Errorf("unload the former expert: %d %s", st, b)
	}
	st, b = post(t, url, "/v1/unload_lora_adapter", `{"lora_name":"`+expert+`"}`)
	env = checkError(t, st, b, 404, "lora_name")
	if env.Error.Message != "The lora adapter '"+expert+"' cannot be found." {
		t.Errorf("unloading twice: %s", b)
	}
}

// Concurrent loads of one name over HTTP, as an adapter and as a router: exactly one is
// answered 200.
func TestConcurrentLoadsOverHTTP(t *testing.T) {
	_, url := lifecycleServer(t)
	for round := range 4 {
		name := jsonString("race" + string(rune('a'+round)))
		var wg sync.WaitGroup
		statuses := make([]int, 6)
		for i := range statuses {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if i%2 == 0 {
					statuses[i], _ = post(t, url, "/v1/load_lora_adapter", `{"lora_name":`+name+`,"lora_path":`+adapterJSON("a_qv")+`}`)
				} else {
					statuses[i], _ = post(t, url, "/v1/load_router", `{"router_name":`+name+`,"router_path":`+topTwo+`}`)
				}
			}()
		}
		wg.Wait()
		ok := 0
		for _, st := range statuses {
			switch st {
			case 200:
				ok++
			case 400, 409:
			default:
				t.Errorf("round %d: status %d", round, st)
			}
		}
		if ok != 1 {
			t.Errorf("round %d: %d loads answered 200 (%v)", round, ok, statuses)
		}
	}
}
