package main

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/loraplex/loraplex/model"
)

// A multi-turn plan is the seed's: the same flags give the same system prompts and
// conversations (so the runs with caching on and off send the same requests), one system prompt
// per adapter, and every conversation has its turns' messages and answer lengths.
func TestMultiTurnPlanIsReproducible(t *testing.T) {
	picker, _ := NewPicker("zipf", 64, 1)
	m := MultiTurn{Users: 40, Turns: 3, Rate: 5, Adapters: 64, Picker: picker, SystemLen: 20, UserLen: Range{2, 5}, OutputLen: Range{3, 3}, TokenMax: 100, Seed: 9}
	s1, c1 := m.Plan()
	s2, c2 := m.Plan()
	if len(s1) != 64 || len(c1) != 40 || !slices.EqualFunc(s1, s2, slices.Equal) {
		t.Fatalf("%d system prompts, %d conversations; or two plans differ", len(s1), len(c1))
	}
	used := map[int]bool{}
	for i, c := range c1 {
		if c.At != c2[i].At || c.Adapter != c2[i].Adapter || len(c.Messages) != 3 || len(c.MaxTokens) != 3 {
			t.Fatalf("conversation %d: %+v vs %+v", i, c, c2[i])
		}
		if i > 0 && c.At < c1[i-1].At {
			t.Errorf("conversation %d starts before %d", i, i-1)
		}
		used[c.Adapter] = true
	}
	// zipf over 64: adapter 0 is the most popular, and the tail is reached.
	if !used[0] || len(used) < 5 {
		t.Errorf("adapters used: %v", used)
	}
	if got := m.MaxLen(); got != 20+3*(5+3) {
		t.Errorf("MaxLen %d", got)
	}
}

// Against a real in-process server, each turn resends the conversation so far (the system
// prompt, earlier messages and the answers the server gave) plus the new message, so with
// caching on every turn after a conversation's first finds at least its previous prompt cached,
// and with caching off nothing is.
func TestMultiTurnResendsTheConversation(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	for _, on := range []bool{true, false} {
		l, err := StartLocal(LocalConfig{Threads: 2, MaxNumSeqs: 8, Adapters: 3, Rank: 4, Targets: []model.Proj{model.ProjQ, model.ProjV},
			Preload: true, Seed: 1, NoPrefixCaching: !on})
		if err != nil {
			t.Fatal(err)
		}
		picker, _ := NewPicker("uniform", 3, 0)
		m := MultiTurn{Users: 4, Turns: 3, Rate: 50, Adapters: 3, Picker: picker, SystemLen: 48, UserLen: Range{5, 9}, OutputLen: Range{4, 6}, TokenMax: 200, Seed: 3}
		systems, convs := m.Plan()
		c := NewClient(l.URL, 60*time.Second, 0)
		rs, _, _ := RunConversations(context.Background(), c, systems, convs, func(a int) string { return l.Adapters[a] })
		c.Close()
		l.Close()
		k := 0
		for _, cv := range convs {
			want := len(systems[cv.Adapter])
			for turn := range cv.Messages {
				r := rs[k]
				k++
				if r.Status != "" || r.Tokens != cv.MaxTokens[turn] {
					t.Fatalf("caching %v: turn %d: status %q, %d tokens", on, turn, r.Status, r.Tokens)
				}
				prev := want
				want += len(cv.Messages[turn])
				if r.PromptLen != want {
					t.Errorf("caching %v: turn %d sent %d prompt tokens, want %d (the conversation so far)", on, turn, r.PromptLen, want)
				}
				switch {
				case !on && r.CachedTokens != 0:
					t.Errorf("caching off: turn %d reports %d cached tokens", turn, r.CachedTokens)
				case on && turn > 0 && r.CachedTokens < prev-16:
					t.Errorf("caching on: turn %d found %d tokens cached, want at least the previous prompt's full pages (%d tokens)", turn, r.CachedTokens, prev)
				}
				want += cv.MaxTokens[turn]
			}
		}
	}
}
