package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
)

// Picker chooses which of n adapters a request names.
type Picker interface {
	Pick(rng *rand.Rand) int
}

// NewPicker builds the popularity model: "identical" sends everything to adapter 0 (one adapter,
// the best case for batching), "uniform" spreads evenly, "zipf" makes adapter k (0-based) as
// likely as 1/(k+1)^s, the skewed mix of real multi-tenant traffic.
func NewPicker(kind string, n int, s float64) (Picker, error) {
	if n <= 0 {
		return nil, fmt.Errorf("popularity over %d adapters", n)
	}
	switch kind {
	case "identical":
		return identical{}, nil
	case "uniform":
		return uniform(n), nil
	case "zipf":
		if !(s > 0) {
			return nil, fmt.Errorf("zipf exponent must be positive, got %v", s)
		}
		// math/rand's Zipf needs s > 1; the CDF table works for any s > 0 (s near 1 is typical).
		cdf := make([]float64, n)
		sum := 0.0
		for k := range n {
			sum += 1 / math.Pow(float64(k+1), s)
			cdf[k] = sum
		}
		for k := range cdf {
			cdf[k] /= sum
		}
		return zipf(cdf), nil
	}
	return nil, fmt.Errorf("popularity %q: want identical, uniform or zipf", kind)
}

type identical struct{}

func (identical) Pick(*rand.Rand) int { return 0 }

type uniform int

func (u uniform) Pick(rng *rand.Rand) int { return rng.IntN(int(u)) }

type zipf []float64 // cumulative probabilities

func (z zipf) Pick(rng *rand.Rand) int {
	u := rng.Float64()
	i := sort.SearchFloat64s(z, u)
	return min(i, len(z)-1) // guards a rounding shortfall in the last entry
}
