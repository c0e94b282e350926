// Package fixtureadapters uploads a reference fixture model's four PEFT adapters to a backend,
// for the tests of the backends, the model runner and the routers. It is apart from
// internal/fixture because it loads through adaptercache, whose own tests import
// internal/fixture (cycle).
package fixtureadapters

import (
	"testing"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
)

// Upload loads fixture model name's adapters (fixture.Adapters) as PEFT checkpoints against cfg
// and uploads them to b, by adapter name. The loaded files are closed when the test ends.
func Upload(t testing.TB, name string, cfg *model.Config, b model.Backend) map[string]*model.Adapter {
	t.Helper()
	out := map[string]*model.Adapter{}
	for _, a := range fixture.Adapters {
		host, closer, err := adaptercache.LoadPEFT(fixture.AdapterDir(name, a), a, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { closer.Close() })
		if out[a], err = model.UploadAdapter(b, cfg, host); err != nil {
			t.Fatal(err)
		}
	}
	return out
}
