package main

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
	"github.com/loraplex/loraplex/router"
)

func f32(name string, rows, cols int, seed int) safetensors.Tensor {
	data := make([]byte, 4*rows*cols)
	for i := range rows * cols {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(float32((i*7+seed)%11)/10-0.5))
	}
	return safetensors.Tensor{Name: name, DType: "F32", Shape: []int{rows, cols}, Data: data}
}

// Both importers through the command line, on q_proj and down_proj of the llama fixture; the
// outputs load with the server's loaders.
func TestImportCommands(t *testing.T) {
	cfg, err := model.LoadConfig(fixture.Dir("llama"))
	if err != nil {
		t.Fatal(err)
	}
	var met, mola []safetensors.Tensor
	for l := range cfg.NumLayers {
		for _, p := range []model.Proj{model.ProjQ, model.ProjDown} {
			out, in := cfg.ProjShape(p)
			m := fmt.Sprintf("base_model.model.model.layers.%d.%s.%s", l, p.Block(), p)
			met = append(met, f32(m+".moe_gate.weight", 2, in, 1), f32(m+".lora_A.weight", 8, in, 2), f32(m+".lora_B.weight", out, 8, 3))
			mola = append(mola, f32(m+".router.router.weight", 2+l, in, 4))
			for i := range 2 + l {
				mola = append(mola, f32(fmt.Sprintf("%s.lora_A_%d.weight", m, i), 4, in, 5+i), f32(fmt.Sprintf("%s.lora_B_%d.weight", m, i), out, 4, 6+i))
			}
		}
	}
	tmp := t.TempDir()
	metFile, molaFile := filepath.Join(tmp, "meteora.safetensors"), filepath.Join(tmp, "mola.safetensors")
	if err := safetensors.WriteFile(metFile, met, nil); err != nil {
		t.Fatal(err)
	}
	if err := safetensors.WriteFile(molaFile, mola, nil); err != nil {
		t.Fatal(err)
	}
	taskFile := filepath.Join(tmp, "list.json")
	if err := os.WriteFile(taskFile, []byte(`["sql", "poetry"]`), 0o644); err != nil {
		t.Fatal(err)
	}
	check := func(out string, names ...string) {
		t.Helper()
		if _, err := router.Load(filepath.Join(out, "router"), cfg); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			_, c, err := adaptercache.LoadPEFT(filepath.Join(out, "adapters", n), n, cfg)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
	}
	out := filepath.Join(tmp, "met")
	code, stdout, stderr := runLorapack(t, "import-meteora", metFile, out, "--tasks", "sql,poetry", "--alpha", "8", "--top-k", "1")
	if code != 0 || !strings.Contains(stdout, "wrote 2 adapters") || !strings.Contains(stdout, "--router met=") {
		t.Fatalf("import-meteora: exit %d\n%s%s", code, stdout, stderr)
	}
	check(out, "sql", "poetry")
	out = filepath.Join(tmp, "met2")
	if code, stdout, stderr = runLorapack(t, "import-meteora", "--tasks", taskFile, "--alpha=8", metFile, out); code != 0 {
		t.Fatalf("import-meteora --tasks FILE: exit %d\n%s%s", code, stdout, stderr)
	}
	check(out, "sql", "poetry")
	out = filepath.Join(tmp, "mola")
	code, stdout, stderr = runLorapack(t, "import-mola", molaFile, out, "--experts", "2,3", "--top-k", "2", "--alpha", "16", "--rank", "4")
	if code != 0 || !strings.Contains(stdout, "wrote 3 adapters") {
		t.Fatalf("import-mola: exit %d\n%s%s", code, stdout, stderr)
	}
	check(out, "expert-0", "expert-1", "expert-2")

	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"import-mola", molaFile, filepath.Join(tmp, "x"), "--top-k", "2", "--alpha", "1"}, exitUsage, "needs --experts and --top-k"},
		{[]string{"import-mola", molaFile, filepath.Join(tmp, "x"), "--experts", "2,a", "--top-k", "2"}, exitUsage, "--experts"},
		{[]string{"import-meteora", metFile}, exitUsage, "takes 2 arguments"},
		{[]string{"import-meteora", metFile, filepath.Join(tmp, "x"), "--alpha", "1"}, exitFail, "--tasks"},
		{[]string{"import-meteora", metFile, filepath.Join(tmp, "x"), "--tasks", "a,b"}, exitFail, "no lora_alpha"},
		{[]string{"import-mola", metFile, filepath.Join(tmp, "x"), "--experts", "2", "--top-k", "2", "--alpha", "1"}, exitFail, "looks like a MeteoRA checkpoint"},
		{[]string{"import-meteora", molaFile, filepath.Join(tmp, "x"), "--tasks", "a,b", "--alpha", "1"}, exitFail, "looks like a MoLA checkpoint"},
	} {
		code, _, stderr := runLorapack(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.msg) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, code, stderr, c.code, c.msg)
		}
	}
}
