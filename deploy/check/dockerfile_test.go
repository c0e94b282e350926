package check

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerui"
	digest "github.com/opencontainers/go-digest"
)

// offlineImages answers BuildKit's base-image metadata lookups without a registry (CI has none):
// every base image is an empty linux/amd64 image with Docker's default PATH.
type offlineImages struct{}

func (offlineImages) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	return ref, "", []byte(`{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}}`), nil
}

// TestDockerfileLint runs BuildKit's Dockerfile linter, the check `docker build --check` runs
// (https://docs.docker.com/reference/build-checks/), over every Dockerfile with all stages and
// the default rule set; any warning or parse/convert error fails. (CopyIgnoredFile needs the
// build context from a BuildKit daemon and is not evaluated here.)
func TestDockerfileLint(t *testing.T) {
	files, err := filepath.Glob("../docker/Dockerfile*")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, ".dockerignore") {
			continue
		}
		n++
		dt, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(f)
		sm := llb.NewSourceMap(nil, name, "Dockerfile", dt)
		sm.Definition = &llb.Definition{} // the build context's LLB, which only a daemon has
		res, err := dockerfile2llb.DockerfileLint(context.Background(), dt, dockerfile2llb.ConvertOpt{
			Config:       dockerui.Config{},
			SourceMap:    sm,
			MetaResolver: offlineImages{},
		})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if res.Error != nil {
			t.Errorf("%s: %s", name, res.Error.Message)
		}
		for _, w := range res.Warnings {
			line := 0
			if w.Location != nil && len(w.Location.Ranges) > 0 {
				line = int(w.Location.Ranges[0].Start.Line)
			}
			t.Errorf("%s:%d: %s: %s (%s)", name, line, w.RuleName, w.Detail, w.URL)
		}
		t.Logf("%s: %d warnings", name, len(res.Warnings))
	}
	if n < 2 {
		t.Errorf("found %d Dockerfiles, want the CPU and CUDA ones", n)
	}
}
