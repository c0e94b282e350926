package lorapack

import (
	"fmt"
	"math"
)

// Sparse is a sparsified tensor: the indices of its kept entries (ascending), their signs, and the
// one magnitude all of them decode to.
type Sparse struct {
	Rows, Cols int
	Idx        []uint32
	Neg        []uint64 // bit j: kept entry j is negative
	Scale      float32
}

// KeepCount is how many of the largest |values| ComPEFT keeps out of n at a density: the
// reference takes the (n - int(n*K))-th smallest |value| as threshold and keeps everything at or
// above it, i.e. int(n*K)+1 entries (more on ties), clipped to n.
func KeepCount(n int, density float64) int {
	k := int(float64(n)*density) + 1
	return min(max(k, 1), n)
}

// absBits orders |v| as an unsigned integer: for non-negative IEEE floats the bit patterns sort
// like the values, which lets Threshold radix-select instead of sorting.
func absBits(v float32) uint32 { return math.Float32bits(v) & 0x7fffffff }

// Threshold returns the k-th largest |value| over the concatenation of the tensors (1 <= k <=
// total), found with two 16-bit radix passes: O(n), no copy, deterministic.
func Threshold(tensors [][]float32, k int) float32 {
	var hist [1 << 16]int
	for _, t := range tensors {
		for _, v := range t {
			hist[absBits(v)>>16]++
		}
	}
	hi, above := pick(&hist, k, 0)
	clear(hist[:])
	for _, t := range tensors {
		for _, v := range t {
			if b := absBits(v); b>>16 == hi {
				hist[b&0xffff]++
			}
		}
	}
	lo, _ := pick(&hist, k, above)
	return math.Float32frombits(hi<<16 | lo)
}

// pick walks a histogram from the top and returns the bucket holding the k-th largest, and the
// count above that bucket.
func pick(hist *[1 << 16]int, k, above int) (uint32, int) {
	for b := len(hist) - 1; b > 0; b-- {
		if above+hist[b] >= k {
			return uint32(b), above
		}
		above += hist[b]
	}
	return 0, above
}

// Sparsify keeps the entries with |v| >= thr (ties included, as the reference does) except
// zeros, whose sign is 0 in the reference, so keeping them would change nothing but the size.
// It returns the kept set and the sum of the kept |values| (for the per-tensor scale).
func Sparsify(vals []float32, rows, cols int, thr float32) (*Sparse, float64, error) {
	if err := checkShape(vals, rows, cols); err != nil {
		return nil, 0, err
	}
	s := &Sparse{Rows: rows, Cols: cols, Neg: make([]uint64, 0, 16)}
	t := absBits(thr)
	var sum float64
	for i, v := range vals {
		b := absBits(v)
		if b < t || b == 0 {
			continue
		}
		j := len(s.Idx)
		if j%64 == 0 {
			s.Neg = append(s.Neg, 0)
		}
		if math.Signbit(float64(v)) {
			s.Neg[j/64] |= 1 << (j % 64)
		}
		s.Idx = append(s.Idx, uint32(i))
		sum += math.Abs(float64(v))
	}
	return s, sum, nil
}

// PerTensor sparsifies one tensor at a density with the mean kept |value| as scale.
func PerTensor(vals []float32, rows, cols int, density float64) (*Sparse, error) {
	if err := checkDensity(density); err != nil {
		return nil, err
	}
	if err := checkShape(vals, rows, cols); err != nil {
		return nil, err
	}
	s, sum, err := Sparsify(vals, rows, cols, Threshold([][]float32{vals}, KeepCount(len(vals), density)))
	if err != nil {
		return nil, err
	}
	if len(s.Idx) > 0 {
		s.Scale = float32(sum / float64(len(s.Idx)))
	}
	return s, nil
}

// Global is ComPEFT exactly as its reference (src/qlora/ties_utils.py,
// get_compressed_lora_weights) does it: flatten all A and B tensors into one vector tau,
// sigma = tau.std() (torch's default, the unbiased n-1 estimate), keep int(n*K)+1 entries of
// largest |tau| (ties included), and set each kept entry to alpha_c * sigma * sign. The
// reference has no default alpha_c (replace_factor is a required argument; the paper tunes it
// on validation data over a small grid); our CLI uses 1.
type Global struct {
	Density float64 `json:"density"`
	AlphaC  float64 `json:"alpha_c"`
	Sigma   float64 `json:"sigma"`
	// Threshold is the smallest kept |value|.
	Threshold float32 `json:"threshold"`
}

// NewGlobal computes the global threshold and sigma over the tensors.
func NewGlobal(tensors [][]float32, density, alphaC float64) (*Global, error) {
	if err := checkDensity(density); err != nil {
		return nil, err
	}
	if math.IsNaN(alphaC) || math.IsInf(alphaC, 0) || alphaC <= 0 {
		return nil, fmt.Errorf("alpha_c %v: want a positive number", alphaC)
	}
	var n int
	var sum float64
	for _, t := range tensors {
		for _, v := range t {
			if f := float64(v); math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, fmt.Errorf("non-finite value %v", v)
			}
			sum += float64(v)
		}
		n += len(t)
	}
	if n < 2 {
		return nil, fmt.Errorf("%d values: too few for a standard deviation", n)
	}
	mean := sum / float64(n)
	var ss float64
	for _, t := range tensors {
		for _, v := range t {
			d := float64(v) - mean
			ss += d * d
		}
	}
	return &Global{
		Density: density, AlphaC: alphaC, Sigma: math.Sqrt(ss / float64(n-1)),
		Threshold: Threshold(tensors, KeepCount(n, density)),
	}, nil
}

// Sparsify applies the global threshold and scale to one tensor.
func (g *Global) Sparsify(vals []float32, rows, cols int) (*Sparse, error) {
	s, _, err := Sparsify(vals, rows, cols, g.Threshold)
	if err != nil {
		return nil, err
	}
	s.Scale = float32(g.AlphaC * g.Sigma)
	return s, nil
}

func checkDensity(d float64) error {
	if !(d > 0 && d <= 1) {
		return fmt.Errorf("density %v: want 0 < density <= 1", d)
	}
	return nil
}

func checkShape(vals []float32, rows, cols int) error {
	if rows <= 0 || cols <= 0 || uint64(rows)*uint64(cols) > MaxElems || rows*cols != len(vals) {
		return fmt.Errorf("shape [%d, %d] does not fit %d values", rows, cols, len(vals))
	}
	for _, v := range vals {
		if f := float64(v); math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("non-finite value %v", v)
		}
	}
	return nil
}
