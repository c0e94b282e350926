package main

import (
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/internal/fixture"
)

// TestRunFixtureWithRouters: --router NAME=DIR serves a bundle whose experts come from
// --adapter-dir; /v1/models lists it with its experts, a completion naming it gives the
// reference tokens with an expert trace, and /metrics counts its selections.
func TestRunFixtureWithRouters(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "models", "llama")
	routers := filepath.Join("..", "..", "testdata", "routers", "llama")
	url, logs, stop := start(t, "--model", dir, "--device", "cpu", "--max-model-len", "64",
		"--adapter-dir", filepath.Join(dir, "adapters"),
		"--router", "top2="+filepath.Join(routers, "top2"), "--router", "mix="+filepath.Join(routers, "null_experts"))
	defer stop()

	var ml struct {
		Data []struct {
			ID      string   `json:"id"`
			Kind    string   `json:"loraplex_kind"`
			Experts []string `json:"experts"`
		} `json:"data"`
	}
	if st := getJSON(t, url+"/v1/models", &ml); st != 200 {
		t.Fatalf("models %d", st)
	}
	var got []string
	for _, m := range ml.Data {
		if m.Kind == "router" {
			got = append(got, m.ID)
			if len(m.Experts) != 4 {
				t.Errorf("router %+v", m)
			}
		}
	}
	if !slices.Equal(got, []string{"mix", "top2"}) {
		t.Errorf("routers listed %v", got)
	}

	fx, err := fixture.LoadRouters("llama")
	if err != nil {
		t.Fatal(err)
	}
	var c fixture.Case
	for _, x := range fx.Cases {
		if x.Router == "llama/top2" {
			c = x
			break
		}
	}
	prompt, _ := json.Marshal(c.Prompt)
	body := `{"model":"top2","prompt":` + string(prompt) + `,"max_tokens":` + strconv.Itoa(len(c.Steps)) +
		`,"temperature":0,"ignore_eos":true,"return_token_ids":true,"expert_trace":true}`
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Choices []struct {
			TokenIDs    []int      `json:"token_ids"`
			ExpertTrace [][]string `json:"expert_trace"`
		} `json:"choices"`
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err := json.Unmarshal(b, &out); err != nil || resp.StatusCode != 200 || len(out.Choices) != 1 {
		t.Fatalf("completion %d %v: %s", resp.StatusCode, err, b)
	}
	if !slices.Equal(out.Choices[0].TokenIDs, c.Tokens()) || len(out.Choices[0].ExpertTrace) != len(c.Steps) {
		t.Errorf("top2: %s, want tokens %v", b, c.Tokens())
	}

	mresp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mbody, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{`loraplex_router_expert_selections_total{`, `router="top2"`, `loraplex_routers{model_name="` + dir + `"} 2`} {
		if !strings.Contains(string(mbody), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "routers=2") {
		t.Errorf("log lacks routers=2:\n%s", logs)
	}
}
