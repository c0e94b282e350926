//go:build unix

package grpcapi_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
)

// wantCodes is the gRPC answer of each fixture.HostileCase outcome.
var wantCodes = map[string]codes.Code{"ok": codes.OK, "forbidden": codes.PermissionDenied, "not_found": codes.NotFound, "unprocessable": codes.FailedPrecondition}

// LoadAdapter and LoadRouter open only files that resolve inside an allowed root, as the HTTP
// load APIs do: links inside are followed, links out are PermissionDenied as a folder or as one
// file of a folder, FIFOs, /dev/zero and oversized configs are refused at once, no answer quotes
// a file's bytes, and a path outside the roots gets the same answer whether it exists or not.
func TestLoadRPCsConfineFiles(t *testing.T) {
	h := fixture.HostileTree(t, "llama")
	e := fixtureEngine(t, "llama", serve.Options{AdapterRoots: []string{h.Root}})
	ts := startServer(t, e, grpcapi.Options{AllowRuntimeAdapterUpdates: true})
	ctx := ctxTimeout(t, 60*time.Second)
	for _, api := range []struct {
		name  string
		cases []fixture.HostileCase
		load  func(name, path string) error
	}{
		{"LoadAdapter", h.Adapters, func(name, path string) error {
			_, err := ts.client.LoadAdapter(ctx, &loraplexv1.LoadAdapterRequest{Name: name, Path: path})
			return err
		}},
		{"LoadRouter", h.Routers, func(name, path string) error {
			_, err := ts.client.LoadRouter(ctx, &loraplexv1.LoadRouterRequest{Name: name, Path: path})
			return err
		}},
	} {
		answers := map[string]string{}
		for i, c := range api.cases {
			start := time.Now()
			err := api.load(fmt.Sprintf("%s%d", strings.ToLower(api.name), i), c.Path)
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("%s %s: took %v", api.name, c.Name, took)
			}
			if got := status.Code(err); got != wantCodes[c.Want] {
				t.Errorf("%s %s: %v, want %v", api.name, c.Name, err, wantCodes[c.Want])
			}
			if err != nil && strings.Contains(err.Error(), h.Secret) {
				t.Errorf("%s %s: the answer quotes the file: %v", api.name, c.Name, err)
			}
			if err != nil {
				answers[c.Name] = fixture.SameOutsideAnswer(status.Convert(err).Message(), c.Path)
			}
		}
		if a, b := answers["existing folder outside"]+answers["existing bundle outside"], answers["missing folder outside"]+answers["missing bundle outside"]; a != b {
			t.Errorf("%s: outside and existing %q, outside and missing %q", api.name, a, b)
		}
	}
}
