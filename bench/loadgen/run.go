package main

import (
	"context"
	"sync"
	"time"
)

// Run replays plan open-loop: each request is sent at its planned offset whether or not earlier
// ones have finished, so a slow server builds a queue instead of slowing the arrivals (a
// closed-loop client would hide exactly the saturation we want to see). modelOf names the model
// for each request. It returns when every request has finished or timed out, so it is bounded by
// the plan's last offset plus the client's per-request timeout.
func Run(ctx context.Context, c *Client, plan []Planned, modelOf func(*Planned) string) (rs []Result, window, wall time.Duration) {
	return replay(ctx, plan, modelOf, c.Complete)
}

// replay is Run with the sending left to send, which may pick a server per request.
func replay(ctx context.Context, plan []Planned, modelOf func(*Planned) string,
	send func(context.Context, string, *Planned) Result) (rs []Result, window, wall time.Duration) {
	rs = make([]Result, len(plan))
	var wg sync.WaitGroup
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for i := range plan {
		p := &plan[i]
		if d := time.Until(start.Add(p.At)); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				for j := i; j < len(plan); j++ {
					rs[j] = Result{Model: modelOf(&plan[j]), Status: "not sent", Expected: plan[j].MaxTokens}
				}
				wg.Wait()
				return rs, time.Since(start), time.Since(start)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rs[i] = send(ctx, modelOf(p), p)
		}()
	}
	window = time.Since(start) // the arrival phase: how long sending took, lateness included
	wg.Wait()
	return rs, window, time.Since(start)
}
