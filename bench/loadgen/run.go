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
	sent, window, wall := arrive(ctx, len(plan), func(i int) time.Duration { return plan[i].At }, func(i int) {
		rs[i] = send(ctx, modelOf(&plan[i]), &plan[i])
	})
	for j := sent; j < len(plan); j++ {
		rs[j] = Result{Model: modelOf(&plan[j]), Status: "not sent", Expected: plan[j].MaxTokens}
	}
	return rs, window, wall
}

// arrive is the open loop both workloads share: it runs start(i) on a goroutine of its own at
// offset at(i) from its call, for i = 0..n-1 in order, whether or not the earlier ones have
// returned. When ctx ends while it waits for an offset, it starts nothing more; started is the
// first i not started (n when all were). window is the arrival phase (how long starting took,
// lateness included); wall also waits for every started call to return.
func arrive(ctx context.Context, n int, at func(i int) time.Duration, start func(i int)) (started int, window, wall time.Duration) {
	var wg sync.WaitGroup
	t0 := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for ; started < n; started++ {
		if d := time.Until(t0.Add(at(started))); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				window = time.Since(t0)
				wg.Wait()
				return started, window, time.Since(t0)
			}
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			start(i)
		}(started)
	}
	window = time.Since(t0)
	wg.Wait()
	return n, window, time.Since(t0)
}
