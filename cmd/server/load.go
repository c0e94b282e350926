package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/tokenizer"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// loaded is a base model ready for the engine.
type loaded struct {
	name       string
	cfg        *model.Config
	weights    *model.Weights
	tok        *tokenizer.Tokenizer // nil: token ids only
	template   *chat.Template       // nil: no chat
	chatTokens map[string]string
}

func loadModel(c *config, b model.Backend, log *slog.Logger) (*loaded, error) {
	if c.modelDir == "" {
		return loadDemo(c, b, log)
	}
	m := &loaded{name: c.servedName}
	if m.name == "" {
		m.name = c.modelDir // vLLM's rule: the --model argument as given
	}
	var err error
	if m.cfg, err = model.LoadConfig(c.modelDir); err != nil {
		return nil, err
	}
	if m.weights, err = model.LoadWeights(c.modelDir, m.cfg, b); err != nil {
		return nil, err
	}
	tokDir := c.tokenizerDir
	if tokDir == "" {
		tokDir = c.modelDir
	}
	if !hasTokenizer(tokDir) {
		if c.tokenizerDir != "" {
			m.weights.Close()
			return nil, fmt.Errorf("--tokenizer %s: no tokenizer.json there", tokDir)
		}
		log.Warn("no tokenizer.json in the model folder: serving token ids only (text prompts, chat and /tokenize are refused)", "dir", tokDir)
	} else {
		if m.tok, err = tokenizer.Load(tokDir); err != nil {
			m.weights.Close()
			return nil, err
		}
		if m.tok.VocabSize() > m.cfg.VocabSize {
			log.Warn("the tokenizer knows more ids than the model embeds; prompts using them will be refused",
				"tokenizer_vocab", m.tok.VocabSize(), "model_vocab", m.cfg.VocabSize)
		}
		m.template, err = chat.FromTokenizerConfig(tokDir)
		switch {
		case errors.Is(err, chat.ErrNoTemplate):
			log.Info("no chat template: /v1/chat/completions is disabled", "dir", tokDir)
		case err != nil:
			m.weights.Close()
			return nil, err
		}
		if m.chatTokens, err = chat.SpecialTokens(tokDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			m.weights.Close()
			return nil, err
		}
	}
	log.Info("model loaded", "name", m.name, "dir", c.modelDir, "architecture", m.cfg.Architecture,
		"layers", m.cfg.NumLayers, "hidden", m.cfg.HiddenSize, "vocab", m.cfg.VocabSize, "tokenizer", m.tok != nil, "chat", m.template != nil)
	return m, nil
}

// copyWeights copies the base model's matrices out of the file mapping (--no-mmap) on a backend
// that reads the mapping in place (model.WeightCopier: the CPU); other backends copy anyway.
func copyWeights(b model.Backend, w *model.Weights, log *slog.Logger) error {
	wc, ok := b.(model.WeightCopier)
	if !ok {
		log.Info("--no-mmap: this backend copies the weights anyway", "backend", b.Name())
		return nil
	}
	start := time.Now()
	n, err := wc.CopyWeights(w)
	if err != nil {
		return fmt.Errorf("--no-mmap: copying the weights out of the file mapping: %w", err)
	}
	log.Info("weights copied out of the file mapping (--no-mmap)", "bytes", n, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func hasTokenizer(dir string) bool {
	for _, f := range []string{"tokenizer.json", "tokenizer.json.gz"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return true
		}
	}
	return false
}

// loadDemo serves the trained demo (demo/, issue 7) when no --model is given: the model, its
// four domain adapters and the router over them, extracted once from the binary to a cache
// folder and then loaded like any other model folder.
func loadDemo(c *config, b model.Backend, log *slog.Logger) (*loaded, error) {
	if c.tokenizerDir != "" {
		return nil, errors.New("--tokenizer needs --model; the demo model has its own tokenizer")
	}
	root, err := demo.Extract()
	if err != nil {
		return nil, err
	}
	c.modelDir = filepath.Join(root, "model")
	if c.servedName == "" {
		c.servedName = demo.Name
	}
	for _, d := range demo.Domains {
		c.adapters = append(c.adapters, adapterSpec{d, filepath.Join(root, "adapters", d)})
	}
	c.routers = append(c.routers, adapterSpec{demo.RouterName, filepath.Join(root, "router")})
	log.Info("serving the built-in demo: a small trained model with adapters "+strings.Join(demo.Domains, ", ")+
		" and the router "+demo.RouterName+"; pass --model DIR for a real model", "folder", root)
	return loadModel(c, b, log)
}
