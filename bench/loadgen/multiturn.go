package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"
)

// The multi-turn chat workload (-workload multiturn): what a prefix cache is for. Users start
// conversations at Poisson times, each with one adapter picked by popularity (zipf), whose
// system prompt every conversation on that adapter shares; each turn resends the whole
// conversation so far (system prompt, every earlier user message and the answer the server
// gave) plus a new user message. Turns of one conversation run one after the other (the next
// needs the previous answer); conversations run concurrently. Prompts are token ids, so a
// turn's prompt extends the previous turn's exactly, as a chat template's rendering would.

// MultiTurn shapes the conversations.
type MultiTurn struct {
	Users     int     // conversations
	Turns     int     // turns per conversation
	Rate      float64 // conversation starts per second (Poisson)
	Adapters  int     // adapters, each with its own system prompt
	Picker    Picker  // which adapter a conversation talks to
	SystemLen int     // tokens of each adapter's system prompt
	UserLen   Range   // tokens of each user message
	OutputLen Range   // answer tokens (max_tokens, with ignore_eos)
	TokenMax  int     // token ids are drawn from [0, TokenMax)
	Seed      uint64
}

// Conversation is one user's chat, decided before the run.
type Conversation struct {
	At        time.Duration // start offset
	Adapter   int
	Messages  [][]int // the user's message of each turn
	MaxTokens []int   // answer length of each turn
}

// MaxLen is the longest prompt + answer a conversation of this workload can reach.
func (m MultiTurn) MaxLen() int { return m.SystemLen + m.Turns*(m.UserLen.Hi+m.OutputLen.Hi) }

// Plan draws the system prompts (one per adapter) and the conversations from the seed, so the
// runs with caching on and off send the same requests.
func (m MultiTurn) Plan() (systems [][]int, convs []Conversation) {
	rng := rand.New(rand.NewPCG(m.Seed, 0x51ed2701))
	ids := func(n int) []int {
		out := make([]int, n)
		for i := range out {
			out[i] = rng.IntN(m.TokenMax)
		}
		return out
	}
	systems = make([][]int, max(m.Adapters, 1))
	for i := range systems {
		systems[i] = ids(m.SystemLen)
	}
	for _, at := range PoissonArrivals(rng, m.Rate, 0, m.Users) {
		c := Conversation{At: at, Adapter: m.Picker.Pick(rng)}
		for range m.Turns {
			c.Messages = append(c.Messages, ids(m.UserLen.draw(rng)))
			c.MaxTokens = append(c.MaxTokens, m.OutputLen.draw(rng))
		}
		convs = append(convs, c)
	}
	return systems, convs
}

// RunConversations plays every conversation against c, model(adapter) naming the model of each,
// and returns one Result per turn (conversation-major). A failed turn ends its conversation;
// the turns it did not send are "not sent (earlier turn failed)".
func RunConversations(ctx context.Context, c *Client, systems [][]int, convs []Conversation,
	model func(adapter int) string) (rs []Result, window, wall time.Duration) {
	turns := 0
	first := make([]int, len(convs)) // index of each conversation's first turn in rs
	for i, cv := range convs {
		first[i] = turns
		turns += len(cv.Messages)
	}
	rs = make([]Result, turns)
	converse := func(i int) {
		cv := &convs[i]
		chat(ctx, c, systems[cv.Adapter], cv, model(cv.Adapter), rs[first[i]:first[i]+len(cv.Messages)])
	}
	started, window, wall := arrive(ctx, len(convs), func(i int) time.Duration { return convs[i].At }, converse)
	// ctx has ended: chat sends nothing now, it only marks each turn not sent.
	for i := started; i < len(convs); i++ {
		converse(i)
	}
	return rs, window, wall
}

// chat runs one conversation's turns in order into out.
func chat(ctx context.Context, c *Client, system []int, cv *Conversation, model string, out []Result) {
	history := slices.Clone(system)
	for t, msg := range cv.Messages {
		if ctx.Err() != nil || (t > 0 && out[t-1].Status != "") {
			for ; t < len(out); t++ {
				out[t] = Result{Model: model, Status: "not sent (earlier turn failed)", Expected: cv.MaxTokens[t]}
			}
			return
		}
		history = append(history, msg...)
		p := Planned{PromptIDs: history, PromptLen: len(history), MaxTokens: cv.MaxTokens[t], KeepOutput: true}
		out[t] = c.Complete(ctx, model, &p)
		history = append(history, out[t].Output...)
		out[t].Output = nil // the history holds it; the report does not need it twice
	}
}

// cacheStats sums prompt and cached tokens over completed turns.
func cacheStats(rs []Result) (prompt, cached int) {
	for _, r := range rs {
		if r.Status == "" {
			prompt += r.PromptLen
			cached += r.CachedTokens
		}
	}
	return prompt, cached
}

// runMultiTurn runs the multi-turn workload: against -url (and -url-nocache, a second server
// with prefix caching off, for the comparison), or in process twice, caching on then off.
// With two runs it prints caching on / caching off for throughput and TTFT.
func runMultiTurn(ctx context.Context, o options, userLen, outputLen Range) error {
	type target struct {
		name, url, base string
		adapters        []string
		close           func()
	}
	server := map[string]any{}
	var targets []func() (target, error)
	projs, err := ParseTargets(o.targets)
	if err != nil {
		return err
	}
	if o.url == "" {
		for _, on := range []bool{true, false} {
			if !on && !o.compareCaching {
				break
			}
			targets = append(targets, func() (target, error) {
				l, err := StartLocal(LocalConfig{ModelDir: o.modelDir, Threads: o.threads, MaxNumSeqs: o.maxSeqs, MaxLoRAs: max(o.adapters, 1),
					Adapters: o.adapters, Rank: o.rank, Targets: projs, Preload: true, Seed: o.seed, Verbose: o.verbose, NoPrefixCaching: !on})
				if err != nil {
					return target{}, err
				}
				if n := o.multi(userLen, outputLen).MaxLen(); n > l.Model.MaxPositions {
					l.Close()
					return target{}, fmt.Errorf("a conversation reaches %d tokens, more than the model's %d: lower -system-len, -turns, -user-len or -output-len", n, l.Model.MaxPositions)
				}
				server["mode"], server["backend"], server["max_num_seqs"], server["adapter_rank"] = "in-process", l.Backend, o.maxSeqs, o.rank
				return target{name: map[bool]string{true: "caching on", false: "caching off"}[on], url: l.URL, base: l.Base, adapters: l.Adapters, close: l.Close}, nil
			})
		}
	} else {
		server["mode"] = "remote"
		urls := []string{o.url}
		if o.urlNoCache != "" {
			urls = append(urls, o.urlNoCache)
		}
		for i, u := range urls {
			targets = append(targets, func() (target, error) {
				c := NewClient(u, o.timeout, o.temperature)
				defer c.Close()
				base, adapters := o.base, []string(nil)
				var err error
				if adapters, err = adapterNames(o.adapterNames); err != nil {
					return target{}, err
				}
				if base == "" || adapters == nil {
					b, a, err := discover(ctx, c)
					if err != nil {
						return target{}, err
					}
					base = cmpOr(base, b)
					if adapters == nil {
						adapters = a
					}
				}
				if len(adapters) > o.adapters && o.adapters > 0 {
					adapters = adapters[:o.adapters]
				}
				name := map[int]string{0: "caching on", 1: "caching off"}[i]
				return target{name: name + " (" + u + ")", url: u, base: base, adapters: adapters, close: func() {}}, nil
			})
		}
	}

	var rep Report
	rep.Started, rep.Command, rep.Server = time.Now().UTC().Format(time.RFC3339), strings.Join(os.Args, " "), server
	m := o.multi(userLen, outputLen)
	rep.Load = map[string]string{"workload": "multiturn", "users": fmt.Sprint(o.users), "turns": fmt.Sprint(o.turns),
		"rate": fmt.Sprint(o.rate), "adapters": fmt.Sprint(o.adapters), "popularity": o.popularity, "zipf_s": fmt.Sprint(o.zipfS),
		"system_len": fmt.Sprint(o.systemLen), "user_len": userLen.String(), "output_len": outputLen.String(), "seed": fmt.Sprint(o.seed)}
	fmt.Printf("loadgen multiturn: %d users x %d turns, conversations start at %g/s, %d adapters (%s), system prompt %d tokens per adapter, user messages %s tokens, answers %s tokens; longest conversation %d tokens\n",
		o.users, o.turns, o.rate, o.adapters, o.popularity, o.systemLen, userLen, outputLen, m.MaxLen())
	for _, open := range targets {
		tg, err := open()
		if err != nil {
			return err
		}
		m.Adapters = len(tg.adapters)
		m.Picker = identical{}
		if len(tg.adapters) > 0 {
			if m.Picker, err = NewPicker(o.popularity, len(tg.adapters), o.zipfS); err != nil {
				tg.close()
				return err
			}
		}
		systems, convs := m.Plan()
		model := func(a int) string {
			if len(tg.adapters) == 0 {
				return tg.base
			}
			return tg.adapters[a]
		}
		c := NewClient(tg.url, o.timeout, o.temperature)
		fmt.Fprintf(os.Stderr, "loadgen: running %s (%d conversations)...\n", tg.name, len(convs))
		before := takeCPU()
		rs, window, wall := RunConversations(ctx, c, systems, convs, model)
		after := takeCPU()
		c.Close()
		tg.close()
		s := summarize(tg.name, rs, window, wall)
		s.ProcessCores, s.Preempted, s.LoadAvg = (after.cpu-before.cpu).Seconds()/wall.Seconds(), after.nivcsw-before.nivcsw, loadAvg()
		s.PromptTokens, s.CachedTokens = cacheStats(rs)
		printSummary(os.Stdout, s, fmt.Sprintf("%d turns of %d conversations", len(rs), len(convs)))
		printCacheLine(os.Stdout, s)
		rep.Runs = append(rep.Runs, s)
		if ctx.Err() != nil {
			break
		}
	}
	if len(rep.Runs) == 2 {
		// ratios(first, second) is second / first: caching on / caching off.
		rep.Ratios = ratios(rep.Runs[1], rep.Runs[0])
		printRatiosTitled(os.Stdout, rep.Ratios, "caching on / caching off", "off", "on")
	}
	if o.jsonPath != "" {
		if err := writeJSON(o.jsonPath, rep); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func printCacheLine(w io.Writer, s Summary) {
	share := 0.0
	if s.PromptTokens > 0 {
		share = float64(s.CachedTokens) / float64(s.PromptTokens)
	}
	fmt.Fprintf(w, "%-22s %d of %d prompt tokens (%.1f%%)\n", "cached (usage)", s.CachedTokens, s.PromptTokens, 100*share)
}

// multi is the workload the flags describe (Adapters and Picker are set per target).
func (o options) multi(userLen, outputLen Range) MultiTurn {
	return MultiTurn{Users: o.users, Turns: o.turns, Rate: o.rate, SystemLen: o.systemLen, UserLen: userLen,
		OutputLen: outputLen, TokenMax: o.tokenMax, Seed: o.seed}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
