package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// runSlots is -compare-slots: the same adapter-mix load (same seed, so identical arrivals,
// adapters, prompts and lengths) against two in-process servers in one invocation, first with
// a device slot for every adapter, then with -compare-slots slots, so the cost of adapters
// moving between the host and the device is measured against the all-resident baseline.
func runSlots(ctx context.Context, o options, promptLen, outputLen Range) error {
	targets, err := ParseTargets(o.targets)
	if err != nil {
		return err
	}
	rep := Report{Started: time.Now().UTC().Format(time.RFC3339), Command: strings.Join(os.Args, " "),
		Server: map[string]any{"mode": "in-process", "adapters": o.adapters, "slots": o.compareSlots, "max_num_seqs": o.maxSeqs}}
	for _, slots := range []int{max(o.adapters, 1), o.compareSlots} {
		l, err := StartLocal(LocalConfig{ModelDir: o.modelDir, Threads: o.threads, MaxNumSeqs: o.maxSeqs, MaxLoRAs: slots,
			Adapters: o.adapters, Rank: o.rank, Targets: targets, Preload: o.preload, Seed: o.seed, Verbose: o.verbose})
		if err != nil {
			return err
		}
		tokenMax := min(o.tokenMax, l.Model.VocabSize)
		picker, err := NewPicker(o.popularity, len(l.Adapters), o.zipfS)
		if err != nil {
			l.Close()
			return err
		}
		wl := Workload{Rate: o.rate, Window: o.duration, Count: o.requests, Picker: picker, PromptLen: promptLen,
			OutputLen: outputLen, TextPrompt: o.textPrompt, TokenMax: tokenMax, Seed: o.seed}
		plan := wl.Plan()
		c := NewClient(l.URL, o.timeout, o.temperature)
		for i := range o.warmup {
			p := plan[i%len(plan)]
			c.Complete(ctx, l.Base, &p)
		}
		name := fmt.Sprintf("%d-slots", slots)
		fmt.Fprintf(os.Stderr, "loadgen: running %s (%d requests, %d adapters)...\n", name, len(plan), len(l.Adapters))
		l.obs.reset()
		adapters := l.Adapters
		rs, window, wall := Run(ctx, c, plan, func(p *Planned) string { return adapters[p.Adapter] })
		s := summarize(name, rs, window, wall)
		s.Engine = l.obs.summary(wall)
		printSummary(os.Stdout, s, fmt.Sprintf("%d adapters, %s, %d device slots", len(adapters), o.popularity, slots))
		rep.Runs = append(rep.Runs, s)
		c.Close()
		l.Close()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	rep.Ratios = ratios(rep.Runs[0], rep.Runs[1])
	printRatiosTitled(os.Stdout, rep.Ratios, "few device slots / all resident", "resident", "slots")
	if o.jsonPath != "" {
		return writeJSON(o.jsonPath, rep)
	}
	return nil
}
