package openai

import (
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"

	"github.com/loraplex/loraplex/serve"
)

type modelCard struct {
	ID          string  `json:"id"`
	Object      string  `json:"object"`
	Created     int64   `json:"created"`
	OwnedBy     string  `json:"owned_by"`
	Root        string  `json:"root"`
	Parent      *string `json:"parent"`
	MaxModelLen int     `json:"max_model_len"`
	// Extensions: what the model is ("base", "adapter" or "router") and a router's experts.
	Kind    string   `json:"loraplex_kind,omitempty"`
	Experts []string `json:"experts,omitempty"`
}

type modelList struct {
	Object string      `json:"object"`
	Data   []modelCard `json:"data"`
}

// models lists the base model, its adapters and its routers the way vLLM lists adapters: an
// adapter's or router's parent (and root, the model it ultimately runs on) is the base model.
func (h *Handler) models(w http.ResponseWriter, r *http.Request) error {
	list := modelList{Object: "list", Data: []modelCard{}}
	for _, m := range h.e.Models() {
		list.Data = append(list.Data, cardOf(m))
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

func cardOf(m serve.ModelInfo) modelCard {
	c := modelCard{ID: m.ID, Object: "model", Created: m.Created, OwnedBy: "loraplex", Root: m.ID, MaxModelLen: m.MaxLen,
		Kind: m.Kind, Experts: m.Experts}
	if m.Parent != "" {
		parent := m.Parent
		c.Parent, c.Root = &parent, parent
	}
	return c
}

// modelsPrefix is the path of OpenAI's model retrieval, GET /v1/models/{model}.
const modelsPrefix = "/v1/models/"

// model is OpenAI's GET /v1/models/{model}: the card /v1/models lists under that id, or a 404
// with OpenAI's code model_not_found.
func (h *Handler) model(w http.ResponseWriter, r *http.Request) error {
	id := strings.TrimPrefix(r.URL.Path, modelsPrefix)
	for _, m := range h.e.Models() {
		if m.ID == id {
			writeJSON(w, http.StatusOK, cardOf(m))
			return nil
		}
	}
	ae := notFound("model", "The model '%s' does not exist", id)
	ae.code = "model_not_found"
	return ae
}

// version is vLLM's GET /version: {"version": ...}, the server's module version from its build
// information ("(devel)" when built from a source tree).
func (h *Handler) version(w http.ResponseWriter, r *http.Request) error {
	v := "(devel)"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		v = bi.Main.Version
	}
	writeJSON(w, http.StatusOK, map[string]string{"version": v})
	return nil
}

type loadAdapterRequest struct {
	LoraName string `json:"lora_name"`
	LoraPath string `json:"lora_path"`
	// LoadInplace (vLLM's field) replaces an adapter already served under the name; without
	// it such a load is a 400, as in vLLM.
	LoadInplace bool `json:"load_inplace"`
}

// loadAdapter is vLLM's /v1/load_lora_adapter. Like vLLM it answers with plain text. Names
// follow serve.CheckName; a name already served is refused unless load_inplace is set.
func (h *Handler) loadAdapter(w http.ResponseWriter, r *http.Request) error {
	if err := h.runtimeUpdates(); err != nil {
		return err
	}
	var req loadAdapterRequest
	if err := h.decode(r, &req); err != nil {
		return err
	}
	if req.LoraName == "" || req.LoraPath == "" {
		return invalid("lora_name", "both lora_name and lora_path must be given")
	}
	// The path must resolve inside an adapter root, and so must every file the loader opens
	// in it: the API must not read arbitrary files.
	path, err := h.e.CheckAdapterPath(req.LoraPath)
	if err != nil {
		return err
	}
	load := h.e.LoadAdapter
	if req.LoadInplace {
		load = h.e.ReplaceAdapter
	}
	if err := load(req.LoraName, path); err != nil {
		return err
	}
	h.log.Info("adapter loaded over HTTP", "name", req.LoraName, "path", req.LoraPath)
	writeText(w, fmt.Sprintf("Success: LoRA adapter '%s' added successfully.", req.LoraName))
	return nil
}

// unloadAdapter is vLLM's /v1/unload_lora_adapter. An adapter that a loaded router uses is not
// unloaded: 409, naming the router.
func (h *Handler) unloadAdapter(w http.ResponseWriter, r *http.Request) error {
	if err := h.runtimeUpdates(); err != nil {
		return err
	}
	var req loadAdapterRequest
	if err := h.decode(r, &req); err != nil {
		return err
	}
	if req.LoraName == "" {
		return invalid("lora_name", "lora_name must be given")
	}
	if err := h.e.UnloadAdapter(req.LoraName); err != nil {
		return err
	}
	h.log.Info("adapter unloaded over HTTP", "name", req.LoraName)
	writeText(w, fmt.Sprintf("Success: LoRA adapter '%s' removed successfully.", req.LoraName))
	return nil
}

func (h *Handler) runtimeUpdates() error {
	if !h.opt.AllowRuntimeAdapterUpdates {
		return fromEngine(&serve.Error{Kind: serve.KindForbidden,
			Msg: "runtime adapter updates are disabled; start the server with --allow-runtime-adapter-updates"})
	}
	return nil
}

func writeText(w http.ResponseWriter, s string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	w.Write([]byte(s))
}
