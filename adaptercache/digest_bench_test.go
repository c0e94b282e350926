package adaptercache

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// BenchmarkDigest measures Digest on a rank-16 adapter on all seven projections of every layer
// of Llama-3-8B, in the two forms the cache hashes: a PEFT folder's BF16 factors (84 MB) and a
// lorapack file loaded for a device that decodes q4 (24 MB of streams; LoadCompressedEncoded).
// Digest hashes on up to GOMAXPROCS goroutines: -cpu 1,2 compares.
func BenchmarkDigest(b *testing.B) {
	cfg, err := model.ParseConfig([]byte(llama3_8B))
	if err != nil {
		b.Fatal(err)
	}
	bench := func(b *testing.B, ha *model.HostAdapter, bytes int64) {
		Digest(ha) // one untimed: the first touch of fresh memory is not the digest's
		b.SetBytes(bytes)
		for b.Loop() {
			Digest(ha)
		}
	}
	b.Run("llama3-8b-r16-all-linear-BF16", func(b *testing.B) {
		ha, c, err := LoadPEFT(writeLlamaAdapter(b, cfg, 16, "BF16"), "x", cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		bench(b, ha, ha.Bytes)
	})
	b.Run("llama3-8b-r16-all-linear-lorapack-q4-encoded", func(b *testing.B) {
		p := filepath.Join(b.TempDir(), "adapter.lorapack")
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := CompressPEFT(writeLlamaAdapter(b, cfg, 16, "BF16"), f, DefaultCompressOptions()); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		ha, c, err := LoadCompressedEncoded(p, "x", cfg, func(codec string) bool { return codec == "q4" || codec == "q8" })
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		var stream int64
		for l := range ha.Modules {
			for _, m := range ha.Modules[l] {
				if m == nil {
					continue
				}
				for _, t := range []*model.HostTensor{&m.A, &m.B} {
					if t.Encoded == nil {
						b.Fatalf("%s is not left encoded", t.Name)
					}
					stream += int64(len(t.Encoded.Stream))
				}
			}
		}
		bench(b, ha, stream)
	})
}
