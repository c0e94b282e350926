package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loraplex/loraplex/internal/kvevtest"
)

var kvAddrRE = regexp.MustCompile(`msg="KV events publishing" endpoint=\S+ addr=(\S+)`)

// complete asks the server for one greedy token after prompt (token ids) on model.
func complete(t *testing.T, url, model string, prompt []int) {
	t.Helper()
	p, _ := json.Marshal(prompt)
	body := fmt.Sprintf(`{"model":%q,"prompt":%s,"max_tokens":1,"temperature":0}`, model, p)
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("completion on %q: %d %s", model, resp.StatusCode, b)
	}
}

// --kv-events-config makes the server publish its prefix cache's pages as vLLM does: a SUB socket
// subscribed to the logged address receives, for completions over HTTP, BlockStored events whose
// hashes are llm-d's, seeded from PYTHONHASHSEED, under the topic's model name for the base model
// and the adapter's name (lora_name) for an adapter.
func TestRunPublishesKVEvents(t *testing.T) {
	t.Setenv("PYTHONHASHSEED", "7")
	dir := filepath.Join("..", "..", "testdata", "models", "llama")
	url, logs, stop := start(t, "--model", dir, "--served-model-name", "llama", "--device", "cpu", "--max-model-len", "64",
		"--adapter-dir", filepath.Join(dir, "adapters"),
		"--kv-events-config", `{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://127.0.0.1:*", "topic": "kv@pod-1@llama"}`)
	defer stop()
	m := kvAddrRE.FindStringSubmatch(logs.String())
	if m == nil {
		t.Fatalf("no KV events address logged:\n%s", logs)
	}
	sub, err := kvevtest.Dial("tcp://"+m[1], "kv@pod-1@llama")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	prompt := func(salt int) []int {
		p := make([]int, 17) // one full page of 16 tokens, and the last token computed after it
		for i := range p {
			p[i] = 1 + (i*5+salt*11)%200
		}
		return p
	}
	// A subscription reaches the publisher some time after Dial, and PUB drops what it sends
	// before: send new prompts until one's events come through.
	var sent [][]int
	var evs []kvevtest.Event
	for i := 0; evs == nil; i++ {
		if i == 100 {
			t.Fatal("no KV events after 100 completions")
		}
		sent = append(sent, prompt(i))
		complete(t, url, "llama", sent[i])
		evs, _ = sub.Next(100 * time.Millisecond)
	}
	check := func(evs []kvevtest.Event, model string, loraName any, prompts [][]int) {
		t.Helper()
		if len(evs) != 1 || evs[0].Tag != "BlockStored" || evs[0].Parent != nil || evs[0].BlockSize != 16 || evs[0].Medium != "GPU" || evs[0].LoRAName != loraName {
			t.Fatalf("events %+v: want one BlockStored of one 16-token page with lora_name %v", evs, loraName)
		}
		if !slices.ContainsFunc(prompts, func(p []int) bool { return slices.Equal(p[:16], evs[0].TokenIDs) }) {
			t.Fatalf("token ids %v: not a page of the prompts sent", evs[0].TokenIDs)
		}
		want, err := kvevtest.LLMDHashes("7", model, evs[0].TokenIDs, 16)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(evs[0].Hashes, want) {
			t.Fatalf("hashes %v, want llm-d's %v", evs[0].Hashes, want)
		}
	}
	check(evs, "llama", nil, sent)
	p := prompt(1000)
	complete(t, url, "a_qv", p)
	evs, err = sub.Next(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	check(evs, "a_qv", "a_qv", [][]int{p})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// A bad --kv-events-config stops the server before it starts, naming the field.
func TestKVEventsConfigFlag(t *testing.T) {
	if _, err := parseFlags([]string{"--kv-events-config", `{"enable_kv_cache_events": true, "publisher": "kafka"}`}, io.Discard); err == nil || !strings.Contains(err.Error(), `publisher "kafka"`) {
		t.Fatalf("error %v, want one naming the publisher", err)
	}
	c, err := parseFlags(nil, io.Discard)
	if err != nil || c.kvEvents != nil {
		t.Fatalf("default: %+v, %v: want events off", c.kvEvents, err)
	}
}
