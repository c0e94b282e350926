package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
)

func runLorapack(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

// compress -> inspect -> decompress end to end, and the decompressed folder loads with LoadPEFT
// into what LoadCompressed gives for the file.
func TestEndToEnd(t *testing.T) {
	dir := fixture.AdapterDir("llama", "b_all_rslora")
	base, err := model.LoadConfig(fixture.Dir("llama"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	for _, flags := range [][]string{nil, {"--codec", "dense"}, {"--density", "0.25", "--codec", "bitmap"}, {"--codec", "auto", "--global", "--alpha", "2"},
		{"--codec", "q4"}, {"--codec", "q8", "--group", "64", "--density", "0"}, {"--codec", "rice-q8", "--density", "0.25"}, {"--codec", "q4", "--dense-a"}} {
		file := filepath.Join(tmp, "a.lorapack")
		code, out, errOut := runLorapack(t, append([]string{"compress", dir, file}, flags...)...)
		if code != 0 || !strings.Contains(out, "smaller than bf16") || !strings.Contains(errOut, "28/28 tensors") {
			t.Fatalf("compress %v: exit %d\n%s%s", flags, code, out, errOut)
		}
		code, out, _ = runLorapack(t, "inspect", file)
		if code != 0 || !strings.Contains(out, "loraplex.lorapack/v2") || !strings.Contains(out, "layers.1.mlp.down_proj.lora_B.weight") || !strings.Contains(out, "total: 28 tensors") {
			t.Fatalf("inspect: exit %d\n%s", code, out)
		}
		if len(flags) > 1 && (flags[1] == "q4" || flags[1] == "q8") {
			g := "32"
			if len(flags) > 3 && flags[2] == "--group" {
				g = flags[3]
			}
			if !strings.Contains(out, flags[1]+"/g"+g) {
				t.Fatalf("inspect does not show %s/g%s:\n%s", flags[1], g, out)
			}
		}
		peft := filepath.Join(tmp, "peft")
		if code, out, errOut = runLorapack(t, "decompress", file, peft); code != 0 {
			t.Fatalf("decompress: exit %d\n%s%s", code, out, errOut)
		}
		want, _, err := adaptercache.LoadCompressed(file, "x", base)
		if err != nil {
			t.Fatal(err)
		}
		got, closer, err := adaptercache.LoadPEFT(peft, "x", base)
		if err != nil {
			t.Fatal(err)
		}
		for l := range want.Modules {
			for p, w := range want.Modules[l] {
				g := got.Modules[l][p]
				if (w == nil) != (g == nil) || w != nil && (!bytes.Equal(w.A.Data, g.A.Data) || !bytes.Equal(w.B.Data, g.B.Data) || w.Scale != g.Scale) {
					t.Fatalf("%v: layer %d proj %d differs", flags, l, p)
				}
			}
		}
		closer.Close()
	}
}

func TestErrors(t *testing.T) {
	tmp := t.TempDir()
	dir := fixture.AdapterDir("llama", "a_qv")
	corrupt := filepath.Join(tmp, "corrupt.lorapack")
	if err := os.WriteFile(corrupt, []byte("not a safetensors file at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{nil, 2, "usage"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"compress", dir}, 2, "takes 2 arguments"},
		{[]string{"compress", dir, filepath.Join(tmp, "x"), "--codec", "auto", "--density", "0"}, 2, "--density"},
		{[]string{"compress", dir, filepath.Join(tmp, "x"), "--bogus"}, 2, "bogus"},
		{[]string{"compress", dir, filepath.Join(tmp, "x"), "--codec", "zip"}, 1, "codec"},
		{[]string{"compress", dir, filepath.Join(tmp, "x"), "--codec", "q4", "--group", "24"}, 1, "group size"},
		{[]string{"compress", dir, filepath.Join(tmp, "x"), "--codec", "rice-q8", "--density", "0"}, 2, "--density"},
		{[]string{"compress", filepath.Join(tmp, "missing"), filepath.Join(tmp, "x")}, 1, "no such file"},
		{[]string{"compress", tmp, filepath.Join(tmp, "x")}, 1, "adapter_config.json"},
		{[]string{"inspect", filepath.Join(tmp, "missing")}, 1, "no such file"},
		{[]string{"inspect", corrupt}, 1, "safetensors"},
		{[]string{"inspect", filepath.Join(dir, "adapter_model.safetensors")}, 1, "not a lorapack file"},
		{[]string{"decompress", corrupt, filepath.Join(tmp, "out")}, 1, "safetensors"},
	} {
		code, _, errOut := runLorapack(t, c.args...)
		if code != c.code || !strings.Contains(errOut, c.msg) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", c.args, code, errOut, c.code, c.msg)
		}
	}
	if _, err := os.Stat(filepath.Join(tmp, "x")); !os.IsNotExist(err) {
		t.Error("a failed compress left its output behind")
	}
}
