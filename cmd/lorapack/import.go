package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/loraplex/loraplex/router/importer"
)

// optFloat is a float flag that records whether it was given.
type optFloat struct{ v *float64 }

func (o *optFloat) String() string {
	if o.v == nil {
		return ""
	}
	return strconv.FormatFloat(*o.v, 'g', -1, 64)
}

func (o *optFloat) Set(s string) error {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return err
	}
	o.v = &f
	return nil
}

// intList parses "8" or "2,4,6,8".
func intList(flagName, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%w: --%s %q: want positive integers separated by commas", errUsage, flagName, s)
		}
		out = append(out, n)
	}
	return out, nil
}

func importMeteoRA(args []string, stdout io.Writer) error {
	var opt importer.MeteoRAOptions
	var tasks string
	var alpha optFloat
	fs := flag.NewFlagSet("import-meteora", flag.ContinueOnError)
	fs.StringVar(&tasks, "tasks", "", "task names in stacking order (a,b,c), or a file listing them (one a line, or a JSON array)")
	fs.StringVar(&opt.Config, "config", "", "adapter_config.json of the stacked adapters (default: the one next to the checkpoint)")
	fs.Var(&alpha, "alpha", "lora_alpha (overrides the config's)")
	fs.IntVar(&opt.TopK, "top-k", 2, "experts mixed per token")
	fs.Float64Var(&opt.Temperature, "temperature", 0, "softmax temperature in router.json (default 1)")
	fs.StringVar(&opt.Base, "base", "", "base_model_name_or_path of the adapters (default: the config's)")
	pos, err := parse(fs, args, 2)
	if err != nil {
		return err
	}
	if opt.TopK < 1 {
		return fmt.Errorf("%w: --top-k %d: want >= 1", errUsage, opt.TopK)
	}
	if opt.Temperature < 0 {
		return fmt.Errorf("%w: --temperature %v: want > 0", errUsage, opt.Temperature)
	}
	opt.Alpha = alpha.v
	if tasks != "" {
		// A value naming an existing file is a task-list file; anything else is a list.
		if st, err := os.Stat(tasks); err == nil && !st.IsDir() {
			if opt.Tasks, err = importer.ReadTaskList(tasks); err != nil {
				return err
			}
		} else {
			for _, t := range strings.Split(tasks, ",") {
				opt.Tasks = append(opt.Tasks, strings.TrimSpace(t))
			}
		}
	}
	res, notes, err := importer.ImportMeteoRA(pos[0], pos[1], opt)
	if err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintf(stdout, "note: %s\n", n)
	}
	report(stdout, res)
	return nil
}

func importMoLA(args []string, stdout io.Writer) error {
	var opt importer.MoLAOptions
	var experts, topK string
	var alpha optFloat
	fs := flag.NewFlagSet("import-mola", flag.ContinueOnError)
	fs.StringVar(&experts, "experts", "", "experts per layer: N, one per layer, or one per equal group of layers (2,4,6,8)")
	fs.StringVar(&topK, "top-k", "", "k per layer, in the same forms as --experts")
	fs.IntVar(&opt.Rank, "rank", 0, "check every expert's rank against this")
	fs.Var(&alpha, "alpha", "lora_alpha (default: the checkpoint's adapter_config.json)")
	fs.StringVar(&opt.Config, "config", "", "the checkpoint's adapter_config.json (default: the one next to it)")
	fs.StringVar(&opt.Prefix, "prefix", "expert", "adapter names are PREFIX-0, PREFIX-1, ...")
	fs.StringVar(&opt.Base, "base", "", "base_model_name_or_path of the adapters (default: the config's)")
	pos, err := parse(fs, args, 2)
	if err != nil {
		return err
	}
	if experts == "" || topK == "" {
		return fmt.Errorf("%w: import-mola needs --experts and --top-k", errUsage)
	}
	if opt.Experts, err = intList("experts", experts); err != nil {
		return err
	}
	if opt.TopK, err = intList("top-k", topK); err != nil {
		return err
	}
	opt.Alpha = alpha.v
	res, err := importer.ImportMoLA(pos[0], pos[1], opt)
	if err != nil {
		return err
	}
	report(stdout, res)
	return nil
}

func report(w io.Writer, res *importer.Result) {
	fmt.Fprintf(w, "wrote %d adapters in %s: %s\n", len(res.Adapters), res.AdapterDir, strings.Join(res.Adapters, ", "))
	fmt.Fprintf(w, "wrote router bundle %s: %d gates over %d layers", res.RouterDir, res.Gates, res.Layers)
	if res.Skipped > 0 {
		fmt.Fprintf(w, " (%d base-model tensors of the checkpoint skipped)", res.Skipped)
	}
	fmt.Fprintf(w, "\nserve with: --adapter-dir %s --router %s=%s\n", res.AdapterDir, filepath.Base(filepath.Dir(res.RouterDir)), res.RouterDir)
}
