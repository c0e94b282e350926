package tokenizer

import (
	"math/rand"
	"runtime"
	"testing"
)

// maxAllocPerInputByte bounds what Encode may allocate per byte of input.
// The merge loop costs 16 bytes per symbol and 8 per queued merge (at most
// two per symbol), the output 8 per id, byte-level text up to 2: under 50.
// Before the bound, append's 1.25x regrowth of those slices cost ~250
// (263 MB for a 1 MB prompt, 2.8 GB for 15 MB).
const maxAllocPerInputByte = 64

// Encoding allocates at most a small constant times its input, whatever the
// shape of the input: one huge pre-token (Llama 2 has no pre-tokenizer, and a
// run of letters is one pre-token for the others) as well as ordinary text.
// It counts bytes allocated, not time, so a loaded machine cannot flake it.
func TestEncodeMemoryIsLinear(t *testing.T) {
	const size = 512 << 10
	rng := rand.New(rand.NewSource(1))
	letters := make([]byte, size)
	for i := range letters {
		letters[i] = byte('a' + rng.Intn(26))
	}
	spaced := make([]byte, size)
	for i := range spaced {
		spaced[i] = "abcdefgh  .\n"[rng.Intn(12)]
	}
	demo := NewByteLevelDemo(nil)
	for _, c := range []struct {
		name string
		tok  *Tokenizer
	}{{"llama2", loadTest(t, "llama2")}, {"llama3", loadTest(t, "llama3")}, {"demo", demo}} {
		for _, in := range []struct {
			name string
			text string
		}{{"letters", string(letters)}, {"spaced", string(spaced)}} {
			c.tok.Encode("warm up", false)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			ids, err := c.tok.Encode(in.text, false)
			runtime.ReadMemStats(&after)
			if err != nil || len(ids) == 0 {
				t.Fatalf("%s/%s: %d ids, %v", c.name, in.name, len(ids), err)
			}
			perByte := float64(after.TotalAlloc-before.TotalAlloc) / size
			t.Logf("%s/%s: %.1f bytes allocated per input byte", c.name, in.name, perByte)
			if perByte > maxAllocPerInputByte {
				t.Errorf("%s/%s: encoding 512 KiB allocated %.0f bytes per input byte, want <= %d", c.name, in.name, perByte, maxAllocPerInputByte)
			}
		}
	}
}
