//go:build unix

package openai_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/testengine"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/openai"
)

// wantStatus is the HTTP answer of each fixture.HostileCase outcome.
var wantStatus = map[string]int{"ok": 200, "forbidden": 403, "not_found": 404, "unprocessable": 422}

// hostileServer serves the llama fixture with the hostile tree's root as an adapter root and an
// adapter dir, runtime updates on.
func hostileServer(t *testing.T) (*fixture.Hostile, string) {
	t.Helper()
	h := fixture.HostileTree(t, "llama")
	e := testengine.New(t, "llama", serve.Options{MaxNumSeqs: 8, MaxBatchedTokens: 128, MaxModelLen: 128, Logger: quiet,
		AdapterRoots: []string{h.Root, filepath.Join(fixtureDir("llama"), "adapters")}, AdapterDirs: []string{h.Root}})
	srv := newServer(t, e, openai.Options{AllowRuntimeAdapterUpdates: true})
	return h, srv.URL
}

// Every file the load APIs open resolves inside an allowed root: links that stay inside are
// followed (Kubernetes volumes), links out are refused (403) as a folder or as one file of a
// folder, missing paths inside a root are 404, FIFOs, /dev/zero and oversized configs are
// refused at once; no answer quotes a file's bytes, and a path outside the roots gets the same
// answer whether it exists or not.
func TestLoadAPIsConfineFiles(t *testing.T) {
	h, url := hostileServer(t)
	for _, api := range []struct {
		path, nameField, pathField, prefix string
		cases                              []fixture.HostileCase
	}{
		{"/v1/load_lora_adapter", "lora_name", "lora_path", "adapter", h.Adapters},
		{"/v1/load_router", "router_name", "router_path", "router", h.Routers},
	} {
		answers := map[string]string{}
		for i, c := range api.cases {
			body, _ := json.Marshal(map[string]string{api.nameField: fmt.Sprintf("%s%d", api.prefix, i), api.pathField: c.Path})
			start := time.Now()
			st, b := post(t, url, api.path, string(body))
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("%s %s: took %v", api.path, c.Name, took)
			}
			if st != wantStatus[c.Want] {
				t.Errorf("%s %s: %d %s, want %d", api.path, c.Name, st, b, wantStatus[c.Want])
			} else if c.Want != "ok" {
				checkError(t, st, b, st, "")
			}
			if strings.Contains(string(b), h.Secret) {
				t.Errorf("%s %s: the answer quotes the file: %s", api.path, c.Name, b)
			}
			answers[c.Name] = fixture.SameOutsideAnswer(string(b), c.Path)
		}
		if a, b := answers["existing folder outside"]+answers["existing bundle outside"], answers["missing folder outside"]+answers["missing bundle outside"]; a != b {
			t.Errorf("%s: outside and existing %q, outside and missing %q", api.path, a, b)
		}
	}
}

// Adapters found by name in --adapter-dir are confined alike: a Kubernetes-style folder is
// served, a folder or config linking out of the roots is refused with 403, a FIFO config with 422.
func TestAdapterDirLookupsConfineFiles(t *testing.T) {
	h, url := hostileServer(t)
	for model, want := range map[string]int{"good": 200, "escape_dir": 403, "config_out": 403, "config_secret": 403, "config_zero": 403, "config_fifo": 422, "config_huge": 422} {
		st, b := post(t, url, "/v1/completions", `{"model":"`+model+`","prompt":[7],"max_tokens":2,"temperature":0}`)
		if st != want {
			t.Errorf("model %s: %d %s, want %d", model, st, b, want)
		}
		if strings.Contains(string(b), h.Secret) {
			t.Errorf("model %s: the answer quotes the file: %s", model, b)
		}
	}
}
