package main

import (
	"math/rand/v2"
	"time"
)

// PoissonArrivals returns send offsets from the start of a run for an open-loop Poisson process
// of rate per second: exponential gaps, drawn in advance so that two runs with the same seed
// (base-only and adapter mix) see exactly the same arrival pattern. It stops at whichever comes
// first of the window and the count; a zero bound is no bound, and at least one of them must be
// set, so the generator always ends.
func PoissonArrivals(rng *rand.Rand, rate float64, window time.Duration, count int) []time.Duration {
	if rate <= 0 || (window <= 0 && count <= 0) {
		return nil
	}
	var out []time.Duration
	t := 0.0
	for count <= 0 || len(out) < count {
		t += rng.ExpFloat64() / rate
		at := time.Duration(t * float64(time.Second))
		if window > 0 && at >= window {
			break
		}
		out = append(out, at)
	}
	return out
}
