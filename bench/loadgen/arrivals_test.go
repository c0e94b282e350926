package main

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestPoissonRate(t *testing.T) {
	rng := rand.New(rand.NewPCG(42, 7))
	for _, rate := range []float64{0.5, 4, 100} {
		const n = 20000
		at := PoissonArrivals(rng, rate, 0, n)
		if len(at) != n {
			t.Fatalf("rate %v: %d arrivals, want %d", rate, len(at), n)
		}
		// Mean gap 1/rate within 3%; with 20000 exponential gaps the standard error is 0.7%.
		got := float64(n) / at[n-1].Seconds()
		if math.Abs(got-rate)/rate > 0.03 {
			t.Errorf("rate %v: measured %v", rate, got)
		}
		// Exponential gaps have standard deviation equal to the mean: a fixed-interval
		// generator would pass the mean check and fail this one.
		var sum, sq float64
		prev := time.Duration(0)
		for _, a := range at {
			g := (a - prev).Seconds()
			sum += g
			sq += g * g
			prev = a
		}
		mean := sum / n
		sd := math.Sqrt(sq/n - mean*mean)
		if math.Abs(sd/mean-1) > 0.05 {
			t.Errorf("rate %v: gap sd/mean = %v, want about 1", rate, sd/mean)
		}
		for i := 1; i < n; i++ {
			if at[i] < at[i-1] {
				t.Fatalf("rate %v: arrivals not sorted at %d", rate, i)
			}
		}
	}
}

func TestPoissonBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	at := PoissonArrivals(rng, 50, 2*time.Second, 0)
	if len(at) < 70 || len(at) > 130 {
		t.Errorf("50/s over 2 s gave %d arrivals", len(at))
	}
	if at[len(at)-1] >= 2*time.Second {
		t.Errorf("arrival %v past the window", at[len(at)-1])
	}
	if got := len(PoissonArrivals(rng, 50, time.Hour, 10)); got != 10 {
		t.Errorf("count bound: %d arrivals", got)
	}
	if got := PoissonArrivals(rng, 50, 0, 0); got != nil {
		t.Errorf("unbounded generator returned %d arrivals; want none", len(got))
	}
	a := PoissonArrivals(rand.New(rand.NewPCG(9, 9)), 3, 0, 50)
	b := PoissonArrivals(rand.New(rand.NewPCG(9, 9)), 3, 0, 50)
	for i := range a {
		if a[i] != b[i] {
			t.Fatal("same seed, different arrivals")
		}
	}
}
