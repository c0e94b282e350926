package model_test

import (
	"compress/gzip"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/model"
)

// The fixtures under testdata/models come from tools/fixtures/gen_models.py: transformers + peft
// in float32 over tiny random models. The CPU engine must give the same greedy tokens and
// logits within logitTol at every step.
const logitTol = 1e-3

type fixtureStep struct {
	Logits []float32 `json:"logits"`
	Token  int       `json:"token"`
	Margin float64   `json:"margin"`
}

type fixtureCase struct {
	Adapter string        `json:"adapter"`
	Prompt  []int         `json:"prompt"`
	Steps   []fixtureStep `json:"steps"`
}

type fixture struct {
	TransformersVersion string        `json:"transformers_version"`
	Cases               []fixtureCase `json:"cases"`
}

var fixtureModels = []string{"llama", "llama3_bf16", "mistral_f16", "qwen2", "qwen3"}

func fixtureDir(name string) string { return filepath.Join("..", "testdata", "models", name) }

func loadFixture(t testing.TB, name string) *fixture {
	t.Helper()
	f, err := os.Open(filepath.Join(fixtureDir(name), "expected.json.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var fx fixture
	if err := json.NewDecoder(zr).Decode(&fx); err != nil {
		t.Fatal(err)
	}
	return &fx
}

// harness drives a Runner the way an engine does: each sequence owns pages of the KV cache
// (handed out in a scrambled order so the block tables matter), prefill may be chunked, and
// several sequences share one step.
type harness struct {
	r        *model.Runner
	pageSize int
	nextPage int
	freeList []int32
}

type seq struct {
	tokens  []int // prompt + generated
	cached  int   // tokens already in the KV cache
	pages   []int32
	adapter *model.Adapter
}

func newHarness(t testing.TB, dir string) (*harness, *model.Config, model.Backend, *model.Weights) {
	t.Helper()
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := cpu.New(0)
	t.Cleanup(b.Close)
	w, err := model.LoadWeights(dir, cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	const pageSize, pages = 4, 256
	r, err := model.NewRunner(cfg, b, w, model.RunnerOptions{MaxTokens: 256, MaxLogitRows: 32, MaxContext: 128,
		KV: model.KVSpec{Pages: pages, PageSize: pageSize}})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{r: r, pageSize: pageSize}
	// Scramble page order: odd pages first, then even ones, reversed.
	for p := pages - 1; p >= 0; p -= 2 {
		h.freeList = append(h.freeList, int32(p))
	}
	for p := pages - 2; p >= 0; p -= 2 {
		h.freeList = append(h.freeList, int32(p))
	}
	return h, cfg, b, w
}

// step runs up to chunk uncached tokens of every sequence in one forward pass and returns the
// logits of sequences whose last token was included.
func (h *harness) step(t testing.TB, seqs []*seq, chunk int) [][]float32 {
	t.Helper()
	var s model.Step
	var adapters []*model.Adapter
	var owners []int
	for i, sq := range seqs {
		n := min(chunk, len(sq.tokens)-sq.cached)
		if n == 0 {
			continue
		}
		for len(sq.pages)*h.pageSize < sq.cached+n {
			sq.pages = append(sq.pages, h.freeList[0])
			h.freeList = h.freeList[1:]
		}
		start := len(s.Tokens)
		for j := 0; j < n; j++ {
			p := sq.cached + j
			s.Tokens = append(s.Tokens, int32(sq.tokens[p]))
			s.Positions = append(s.Positions, int32(p))
			s.Slots = append(s.Slots, sq.pages[p/h.pageSize]*int32(h.pageSize)+int32(p%h.pageSize))
		}
		sq.cached += n
		s.Seqs = append(s.Seqs, model.SeqRows{Start: start, N: n, Len: sq.cached, Pages: sq.pages})
		adapters = append(adapters, sq.adapter)
		if sq.cached == len(sq.tokens) {
			s.LogitRows = append(s.LogitRows, int32(len(s.Tokens)-1))
			owners = append(owners, i)
		}
	}
	V := h.r.Cfg.VocabSize
	logits := make([]float32, len(s.LogitRows)*V)
	if err := h.r.Forward(&s, adapters, logits); err != nil {
		t.Fatal(err)
	}
	out := make([][]float32, len(seqs))
	for k, i := range owners {
		out[i] = logits[k*V : (k+1)*V]
	}
	return out
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// run generates greedily for all cases at once and checks every step.
func runCases(t *testing.T, h *harness, cases []fixtureCase, adapters map[string]*model.Adapter, chunk int) (worst float64) {
	seqs := make([]*seq, len(cases))
	for i, c := range cases {
		seqs[i] = &seq{tokens: append([]int(nil), c.Prompt...), adapter: adapters[c.Adapter]}
	}
	steps := len(cases[0].Steps)
	for st := 0; st < steps; st++ {
		got := make([][]float32, len(seqs))
		for {
			for i, l := range h.step(t, seqs, chunk) {
				if l != nil {
					got[i] = l
				}
			}
			done := true
			for _, sq := range seqs {
				if sq.cached < len(sq.tokens) {
					done = false
				}
			}
			if done {
				break
			}
		}
		for i, c := range cases {
			want := c.Steps[st]
			for j, v := range want.Logits {
				d := math.Abs(float64(got[i][j] - v))
				worst = max(worst, d)
				if d > logitTol {
					t.Fatalf("case %d (adapter %q, prompt %v) step %d: logit[%d] = %g, want %g (diff %g)", i, c.Adapter, c.Prompt, st, j, got[i][j], v, d)
				}
			}
			if tok := argmax(got[i]); tok != want.Token {
				t.Fatalf("case %d (adapter %q) step %d: greedy token %d, want %d (margin %g)", i, c.Adapter, st, tok, want.Token, want.Margin)
			}
			seqs[i].tokens = append(seqs[i].tokens, want.Token)
		}
	}
	return worst
}

func TestFixturesBaseModel(t *testing.T) {
	for _, name := range fixtureModels {
		t.Run(name, func(t *testing.T) {
			fx := loadFixture(t, name)
			h, _, _, _ := newHarness(t, fixtureDir(name))
			var base []fixtureCase
			for _, c := range fx.Cases {
				if c.Adapter == "" {
					base = append(base, c)
				}
			}
			worst := runCases(t, h, base, nil, 1<<20)
			t.Logf("%s: %d cases, worst logit diff %.2e", name, len(base), worst)
		})
	}
}

// TestFixturesMixedAdapters runs every case of a model (base and four adapters of different
// ranks, targets and scales) in one batch, with prefill chunked to 3 tokens so chunks of
// different sequences interleave with decode rows.
func TestFixturesMixedAdapters(t *testing.T) {
	for _, name := range fixtureModels {
		t.Run(name, func(t *testing.T) {
			fx := loadFixture(t, name)
			h, cfg, b, _ := newHarness(t, fixtureDir(name))
			adapters := map[string]*model.Adapter{}
			for _, c := range fx.Cases {
				if c.Adapter == "" || adapters[c.Adapter] != nil {
					continue
				}
				host, closer, err := adaptercache.LoadPEFT(filepath.Join(fixtureDir(name), "adapters", c.Adapter), c.Adapter, cfg)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { closer.Close() })
				a, err := model.UploadAdapter(b, cfg, host)
				if err != nil {
					t.Fatal(err)
				}
				adapters[c.Adapter] = a
			}
			for _, chunk := range []int{1 << 20, 3} {
				worst := runCases(t, h, fx.Cases, adapters, chunk)
				t.Logf("%s chunk %d: %d cases, worst logit diff %.2e", name, chunk, len(fx.Cases), worst)
			}
		})
	}
}
