// Command loadgen is an open-loop load generator for loraplex's OpenAI-style completions API.
// It sends streaming completions at Poisson-distributed times, each naming the base model or one
// of N LoRA adapters chosen by a popularity model, and reports throughput and TTFT / inter-token
// / end-to-end latency percentiles.
//
// With -url it drives a running server. Without it, it starts the engine and the HTTP gateway
// in-process on 127.0.0.1 (the demo model unless -model), writes -adapters random PEFT adapters
// of rank -rank, and drives that over real HTTP. -compare-base (default on in-process) replays
// the same arrivals, prompts and lengths against the base model first, then the adapter mix,
// and prints the ratio: what serving many adapters costs over serving none.
//
// With -replicas it drives several running servers and sends each request to one of them:
// -route round-robin cycles; -route affine applies llm-d's adapter-affinity rule to what each
// replica's /metrics says (vllm:lora_requests_info's running and waiting sets,
// vllm:lora_adapter_loaded), else the least loaded, and the report adds each replica's share
// and the adapter loads the run caused (bench/multireplica/run.sh compares the two).
//
//	go run ./bench/loadgen -adapters 16 -rank 8 -popularity zipf -rate 4 -duration 30s
//	go run ./bench/loadgen -url http://127.0.0.1:8000 -rate 2 -requests 100
//	go run ./bench/loadgen -replicas http://127.0.0.1:8001,http://127.0.0.1:8002 -route affine -adapter-names @DIR
//
// With -workload multiturn it plays chats instead (multiturn.go): -users conversations of -turns
// turns, each on an adapter picked by -popularity with that adapter's -system-len-token system
// prompt, every turn resending the conversation so far. In process it runs twice, prefix caching
// on then off; with -url and -url-nocache it drives the two servers; either way it prints
// throughput and TTFT with caching on / off.
//
//	go run ./bench/loadgen -workload multiturn -adapters 64 -users 32 -turns 4 -system-len 2000 -rate 2
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"
)

type options struct {
	url, modelDir, adapterNames, base string
	adapters, rank, threads, maxSeqs  int
	maxLoRAs, compareSlots            int
	targets                           string
	preload                           bool
	rate                              float64
	duration                          time.Duration
	requests                          int
	popularity                        string
	zipfS                             float64
	promptLen, outputLen              string
	textPrompt                        bool
	tokenMax                          int
	temperature                       float64
	compareBase                       bool
	seed                              uint64
	timeout                           time.Duration
	warmup                            int
	jsonPath, writeAdapters           string
	verbose                           bool
	replicas, route                   string
	affinitySlack                     int
	scrapeInterval                    time.Duration
	// -workload multiturn
	workload, userLen, urlNoCache string
	users, turns, systemLen       int
	compareCaching                bool
}

func main() {
	var o options
	flag.StringVar(&o.url, "url", "", "drive a running server at this base URL (default: start one in-process on 127.0.0.1)")
	flag.StringVar(&o.modelDir, "model", "", "in-process: Hugging Face model folder (default: the demo model)")
	flag.IntVar(&o.adapters, "adapters", 16, "number of adapters (in-process: generated; -url: the first N the server lists, 0 = all)")
	flag.StringVar(&o.adapterNames, "adapter-names", "", "-url: comma-separated adapter names, or @DIR for the folders in DIR, instead of asking /v1/models (which lists only loaded adapters)")
	flag.StringVar(&o.writeAdapters, "write-adapters", "", "write -adapters random adapters of -rank for the model (-model or the demo) into this folder and exit; serve it with cmd/server --adapter-dir")
	flag.StringVar(&o.base, "base", "", "-url: the base model's name instead of asking /v1/models")
	flag.IntVar(&o.rank, "rank", 8, "in-process: LoRA rank of the generated adapters")
	flag.StringVar(&o.targets, "targets", "all", "in-process: target modules of the generated adapters (comma-separated, or all)")
	flag.BoolVar(&o.preload, "preload", true, "in-process: load adapters before the run (false: on-demand loading, paid by the first request of each)")
	flag.IntVar(&o.threads, "threads", 0, "in-process: CPU backend threads (0 = GOMAXPROCS)")
	flag.IntVar(&o.maxSeqs, "max-num-seqs", 16, "in-process: engine batch size")
	flag.IntVar(&o.maxLoRAs, "max-loras", 0, "in-process: adapter device slots (0: all adapters fit)")
	flag.IntVar(&o.compareSlots, "compare-slots", 0, "in-process: run the adapter mix twice in this invocation, with every adapter resident (-max-loras = -adapters) and with this many device slots, and print slots/all-resident ratios (replaces -compare-base)")
	flag.Float64Var(&o.rate, "rate", 4, "mean arrival rate, requests per second (Poisson)")
	flag.DurationVar(&o.duration, "duration", 30*time.Second, "arrival window (0 = until -requests)")
	flag.IntVar(&o.requests, "requests", 0, "stop after this many requests (0 = until -duration)")
	flag.StringVar(&o.popularity, "popularity", "zipf", "adapter popularity: identical, uniform or zipf")
	flag.Float64Var(&o.zipfS, "zipf-s", 1.0, "zipf exponent")
	flag.StringVar(&o.promptLen, "prompt-len", "32", "prompt length, N or A:B (uniform)")
	flag.StringVar(&o.outputLen, "output-len", "64", "output tokens (max_tokens with ignore_eos), N or A:B")
	flag.BoolVar(&o.textPrompt, "text", false, "send random-word text prompts instead of token ids")
	flag.IntVar(&o.tokenMax, "token-max", 256, "token-id prompts draw ids from [0, token-max)")
	flag.Float64Var(&o.temperature, "temperature", 0, "sampling temperature")
	flag.BoolVar(&o.compareBase, "compare-base", true, "run the same load on the base model first and print adapter/base ratios (default off with -url)")
	flag.Uint64Var(&o.seed, "seed", 1, "seed for arrivals, adapters, prompts and lengths")
	flag.DurationVar(&o.timeout, "timeout", 120*time.Second, "per-request timeout")
	flag.IntVar(&o.warmup, "warmup", 2, "unmeasured sequential requests to the base model before the runs")
	flag.StringVar(&o.jsonPath, "json", "", "also write the report as JSON to this file")
	flag.BoolVar(&o.verbose, "v", false, "in-process: log the server's messages to stderr")
	flag.StringVar(&o.replicas, "replicas", "", "drive several running servers (comma-separated base URLs) instead of -url, each request sent where -route picks")
	flag.StringVar(&o.route, "route", "affine", "-replicas: affine (llm-d's adapter-affinity rule on the replicas' vllm:lora_requests_info and vllm:lora_adapter_loaded, else least loaded) or round-robin")
	flag.IntVar(&o.affinitySlack, "affinity-slack", 16, "-replicas affine: pass over a replica with this many more requests in flight than the least loaded (0: no bound)")
	flag.DurationVar(&o.scrapeInterval, "scrape-interval", 100*time.Millisecond, "-replicas affine: how often each replica's /metrics is read")
	flag.StringVar(&o.workload, "workload", "single", "single (independent requests) or multiturn (chats whose turns resend the conversation; see -users, -turns, -system-len)")
	flag.IntVar(&o.users, "users", 16, "multiturn: conversations")
	flag.IntVar(&o.turns, "turns", 4, "multiturn: turns per conversation")
	flag.IntVar(&o.systemLen, "system-len", 2000, "multiturn: tokens of each adapter's system prompt (shared by its conversations)")
	flag.StringVar(&o.userLen, "user-len", "64", "multiturn: tokens of each user message, N or A:B")
	flag.StringVar(&o.urlNoCache, "url-nocache", "", "multiturn with -url: a second server with prefix caching off, run after -url for the on/off ratios")
	flag.BoolVar(&o.compareCaching, "compare-caching", true, "multiturn in-process: run twice, prefix caching on then off, and print the ratios")
	flag.Parse()
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.replicas != "" {
		if o.url != "" {
			fmt.Fprintln(os.Stderr, "loadgen: -url and -replicas exclude each other")
			os.Exit(2)
		}
		o.url = splitList(o.replicas)[0] // discovery and warm-up start there
	}
	if o.url != "" && !set["compare-base"] {
		o.compareBase = false // a remote server may serve real traffic; doubling the load is opt-in
	}
	run := run
	if o.writeAdapters != "" {
		run = writeOnly
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.duration <= 0 && o.requests <= 0 {
		return fmt.Errorf("set -duration or -requests: the run must end by itself")
	}
	if !(o.rate > 0) {
		return fmt.Errorf("-rate must be positive")
	}
	promptLen, err := ParseRange(o.promptLen)
	if err != nil {
		return fmt.Errorf("-prompt-len: %w", err)
	}
	outputLen, err := ParseRange(o.outputLen)
	if err != nil {
		return fmt.Errorf("-output-len: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	switch o.workload {
	case "single":
	case "multiturn":
		userLen, err := ParseRange(o.userLen)
		if err != nil {
			return fmt.Errorf("-user-len: %w", err)
		}
		if o.users <= 0 || o.turns <= 0 || o.systemLen < 0 {
			return fmt.Errorf("multiturn: -users and -turns must be positive and -system-len not negative")
		}
		return runMultiTurn(ctx, o, userLen, outputLen)
	default:
		return fmt.Errorf("-workload %q: want single or multiturn", o.workload)
	}

	server := map[string]any{}
	var obs *engineObserver
	var base string
	var adapters []string
	url := o.url
	if url == "" {
		targets, err := ParseTargets(o.targets)
		if err != nil {
			return err
		}
		if o.compareSlots > 0 {
			return runSlots(ctx, o, promptLen, outputLen)
		}
		slots := o.maxLoRAs
		if slots == 0 {
			slots = max(o.adapters, 1)
		}
		l, err := StartLocal(LocalConfig{ModelDir: o.modelDir, Threads: o.threads, MaxNumSeqs: o.maxSeqs, MaxLoRAs: slots, Adapters: o.adapters,
			Rank: o.rank, Targets: targets, Preload: o.preload, Seed: o.seed, Verbose: o.verbose})
		if err != nil {
			return err
		}
		defer l.Close()
		url, base, adapters, obs = l.URL, l.Base, l.Adapters, l.obs
		server["mode"] = "in-process"
		server["backend"] = l.Backend
		server["max_num_seqs"] = o.maxSeqs
		server["adapter_rank"] = o.rank
		server["adapter_targets"] = o.targets
		server["preload"] = o.preload
		if o.tokenMax > l.Model.VocabSize {
			o.tokenMax = l.Model.VocabSize
		}
	} else {
		server["mode"] = "remote"
	}
	c := NewClient(url, o.timeout, o.temperature)
	defer c.Close()
	clients := []*Client{c}
	if o.replicas != "" {
		if o.route != "affine" && o.route != "round-robin" {
			return fmt.Errorf("-route %q: want affine or round-robin", o.route)
		}
		if !(o.scrapeInterval > 0) {
			return fmt.Errorf("-scrape-interval must be positive")
		}
		for _, u := range splitList(o.replicas)[1:] {
			rc := NewClient(u, o.timeout, o.temperature)
			defer rc.Close()
			clients = append(clients, rc)
		}
		server["mode"], server["replicas"], server["route"] = "replicas", len(clients), o.route
	}
	if o.url != "" {
		base = o.base
		if adapters, err = adapterNames(o.adapterNames); err != nil {
			return err
		}
		if base == "" || adapters == nil {
			b, a, err := discover(ctx, c)
			if err != nil {
				return err
			}
			if base == "" {
				base = b
			}
			if adapters == nil {
				adapters = a
			}
		}
		if o.adapters > 0 && len(adapters) > o.adapters {
			adapters = adapters[:o.adapters]
		}
	}
	if len(adapters) == 0 && o.adapters > 0 && o.url != "" {
		fmt.Fprintln(os.Stderr, "loadgen: the server lists no adapters; running on the base model only (see -adapter-names)")
	}
	server["url"], server["base"], server["adapters"] = url, base, len(adapters)

	var picker Picker = identical{}
	if len(adapters) > 0 {
		if picker, err = NewPicker(o.popularity, len(adapters), o.zipfS); err != nil {
			return err
		}
	}
	wl := Workload{Rate: o.rate, Window: o.duration, Count: o.requests, Picker: picker, PromptLen: promptLen,
		OutputLen: outputLen, TextPrompt: o.textPrompt, TokenMax: o.tokenMax, Seed: o.seed}
	plan := wl.Plan()
	if len(plan) == 0 {
		return fmt.Errorf("the plan is empty: raise -rate or -duration")
	}

	// Warm-up pays one-time costs (first connection, lazily built buffers, page faults of
	// the weights) outside the measured runs.
	for _, rc := range clients {
		for i := range o.warmup {
			p := plan[i%len(plan)]
			if r := rc.Complete(ctx, base, &p); r.Status != "" {
				return fmt.Errorf("warm-up request to %s at %s failed: %s", base, rc.base, r.Status)
			}
		}
	}

	mix := fmt.Sprintf("%d adapters, popularity %s", len(adapters), o.popularity)
	if o.popularity == "zipf" {
		mix += fmt.Sprintf(" s=%g", o.zipfS)
	}
	load := fmt.Sprintf("rate %g req/s, %d requests, prompt %s %s, output %s tokens", o.rate, len(plan), promptLen,
		map[bool]string{true: "words", false: "token ids"}[o.textPrompt], outputLen)
	fmt.Printf("loadgen: %s, base %s, %s\nload: %s\n", url, base, mix, load)

	type phase struct {
		name, desc string
		model      func(*Planned) string
	}
	var phases []phase
	if o.compareBase || len(adapters) == 0 {
		phases = append(phases, phase{"base", "all requests on " + base, func(*Planned) string { return base }})
	}
	if len(adapters) > 0 {
		phases = append(phases, phase{"adapters", mix, func(p *Planned) string { return adapters[p.Adapter] }})
	}
	rep := Report{Started: time.Now().UTC().Format(time.RFC3339), Command: strings.Join(os.Args, " "), Server: server,
		Load: map[string]string{"rate": fmt.Sprint(o.rate), "duration": o.duration.String(), "requests": fmt.Sprint(len(plan)),
			"popularity": o.popularity, "zipf_s": fmt.Sprint(o.zipfS), "prompt_len": promptLen.String(),
			"output_len": outputLen.String(), "text_prompt": fmt.Sprint(o.textPrompt), "seed": fmt.Sprint(o.seed)}}
	for _, ph := range phases {
		fmt.Fprintf(os.Stderr, "loadgen: running %s (%d requests)...\n", ph.name, len(plan))
		if obs != nil {
			obs.reset()
		}
		before := takeCPU()
		var rs []Result
		var window, wall time.Duration
		var routed *ReplicaReport
		if o.replicas != "" {
			var r Router = NewRoundRobin(len(clients))
			if o.route == "affine" {
				r = NewAffine(len(clients), o.affinitySlack, base)
			}
			if rs, window, wall, routed, err = runRouted(ctx, clients, o.route, r, o.scrapeInterval, plan, ph.model); err != nil {
				return err
			}
		} else {
			rs, window, wall = Run(ctx, c, plan, ph.model)
		}
		after := takeCPU()
		s := summarize(ph.name, rs, window, wall)
		s.Replicas = routed
		s.ProcessCores, s.Preempted, s.LoadAvg = (after.cpu-before.cpu).Seconds()/wall.Seconds(), after.nivcsw-before.nivcsw, loadAvg()
		if obs != nil {
			s.Engine = obs.summary(wall)
		}
		printSummary(os.Stdout, s, ph.desc)
		if routed != nil {
			printReplicas(os.Stdout, routed)
		}
		rep.Runs = append(rep.Runs, s)
		if ctx.Err() != nil {
			break
		}
	}
	if len(rep.Runs) == 2 {
		rep.Ratios = ratios(rep.Runs[0], rep.Runs[1])
		printRatios(os.Stdout, rep.Ratios)
	}
	if o.jsonPath != "" {
		if err := writeJSON(o.jsonPath, rep); err != nil {
			return err
		}
	}
	return ctx.Err()
}
