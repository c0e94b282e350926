package demo

import (
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/router"
	"github.com/loraplex/loraplex/tokenizer"
)

// Loaded is a trained demo folder (model/, adapters/<domain>/, router/, eval/) on a backend, for
// tests and benchmarks that evaluate it without the server: the base weights, every adapter,
// the router resolved over them, and the held-out texts.
type Loaded struct {
	Dir      string
	B        model.Backend
	Cfg      *model.Config
	Weights  *model.Weights
	Tok      *tokenizer.Tokenizer
	Adapters map[string]*model.Adapter
	Router   *model.Adapter // a routed "adapter": Routing over Adapters
	closers  []io.Closer
}

// Load extracts the embedded trained demo and loads it on b.
func Load(b model.Backend) (*Loaded, error) {
	root, err := Extract()
	if err != nil {
		return nil, err
	}
	return LoadDir(root, b)
}

// LoadDir loads a trained demo folder (tools/train/train.py's output layout) on b. Every folder
// under adapters/ is loaded; the router bundle is resolved over them.
func LoadDir(dir string, b model.Backend) (_ *Loaded, err error) {
	l := &Loaded{Dir: dir, B: b, Adapters: map[string]*model.Adapter{}}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	mdir := filepath.Join(dir, "model")
	if l.Cfg, err = model.LoadConfig(mdir); err != nil {
		return nil, err
	}
	if l.Tok, err = tokenizer.Load(mdir); err != nil {
		return nil, err
	}
	if l.Weights, err = model.LoadWeights(mdir, l.Cfg, b); err != nil {
		return nil, err
	}
	l.closers = append(l.closers, l.Weights)
	dirs, err := os.ReadDir(filepath.Join(dir, "adapters"))
	if err != nil {
		return nil, err
	}
	for _, d := range dirs {
		name := d.Name()
		h, c, err := adaptercache.LoadPEFT(filepath.Join(dir, "adapters", name), name, l.Cfg)
		if err != nil {
			return nil, err
		}
		l.closers = append(l.closers, c) // the CPU backend reads the mapped file in place
		if l.Adapters[name], err = model.UploadAdapter(b, l.Cfg, h); err != nil {
			return nil, err
		}
	}
	bundle, err := router.Load(filepath.Join(dir, "router"), l.Cfg)
	if err != nil {
		return nil, err
	}
	if err := bundle.Upload(b); err != nil {
		return nil, err
	}
	experts := make([]*model.Adapter, len(bundle.Experts()))
	for i, x := range bundle.Experts() {
		if experts[i] = l.Adapters[x]; experts[i] == nil {
			return nil, fmt.Errorf("demo %s: router expert %q has no adapter folder", dir, x)
		}
	}
	rt, err := bundle.Routing(RouterName, l.Cfg, experts)
	if err != nil {
		return nil, err
	}
	l.Router = &model.Adapter{Name: RouterName, Routing: rt}
	return l, nil
}

// Close releases the weights and the adapters' files.
func (l *Loaded) Close() {
	for i := len(l.closers) - 1; i >= 0; i-- {
		l.closers[i].Close()
	}
	l.closers = nil
}

// EvalDomains lists the held-out texts (eval/<domain>.txt), sorted.
func (l *Loaded) EvalDomains() []string {
	files, _ := filepath.Glob(filepath.Join(l.Dir, "eval", "*.txt"))
	var out []string
	for _, f := range files {
		out = append(out, strings.TrimSuffix(filepath.Base(f), ".txt"))
	}
	sort.Strings(out)
	return out
}

// EvalTokens returns the first max tokens of a domain's held-out text (all of it for max <= 0).
func (l *Loaded) EvalTokens(domain string, max int) ([]int, error) {
	raw, err := os.ReadFile(filepath.Join(l.Dir, "eval", domain+".txt"))
	if err != nil {
		return nil, err
	}
	ids, err := l.Tok.Encode(string(raw), false)
	if err != nil {
		return nil, err
	}
	if max > 0 && len(ids) > max {
		ids = ids[:max]
	}
	return ids, nil
}

// NewRunner makes a runner for whole windows of n tokens (one sequence, every row's logits).
func (l *Loaded) NewRunner(n int) (*model.Runner, error) {
	return model.NewRunner(l.Cfg, l.B, l.Weights, model.RunnerOptions{MaxTokens: n, MaxLogitRows: n, MaxContext: n,
		KV: model.KVSpec{Pages: (n + 15) / 16, PageSize: 16}})
}

// Perplexity is exp(mean next-token NLL) of ids through ad (nil: the base), in non-overlapping
// windows of r's MaxTokens tokens (a shorter tail dropped), each starting at position 0 with no
// BOS: tools/train/train.py's protocol. r comes from NewRunner.
func Perplexity(r *model.Runner, ids []int, ad *model.Adapter) (float64, error) {
	n, V := r.Opt.MaxTokens, r.Cfg.VocabSize
	logits := make([]float32, n*V)
	pages := make([]int32, (n+15)/16)
	for i := range pages {
		pages[i] = int32(i)
	}
	var nll float64
	var count int
	for start := 0; start+n <= len(ids); start += n {
		w := ids[start : start+n]
		s := &model.Step{Seqs: []model.SeqRows{{N: n, Len: n, Pages: pages}}}
		for i, id := range w {
			s.Tokens, s.Positions, s.Slots = append(s.Tokens, int32(id)), append(s.Positions, int32(i)), append(s.Slots, int32(i))
			s.LogitRows = append(s.LogitRows, int32(i))
		}
		if err := r.Forward(s, []*model.Adapter{ad}, logits); err != nil {
			return 0, err
		}
		for i := 0; i+1 < n; i++ {
			row := logits[i*V : (i+1)*V]
			m := math.Inf(-1)
			for _, v := range row {
				m = math.Max(m, float64(v))
			}
			var z float64
			for _, v := range row {
				z += math.Exp(float64(v) - m)
			}
			nll += m + math.Log(z) - float64(row[w[i+1]])
			count++
		}
	}
	if count == 0 {
		return 0, fmt.Errorf("demo: fewer than %d tokens to score", n)
	}
	return math.Exp(nll / float64(count)), nil
}
