package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/lorapack"
)

const usage = `usage:
  lorapack compress PEFT_DIR OUT_FILE [--density K] [--codec dense|ternary|bitmap|rice|auto|q8|q4|rice-q8]
                    [--group G] [--dense-a] [--global [--alpha A]]
      default: --codec q4 (group-wise int4, 4.5 bits a value: 3.6x smaller than bf16, about +1%
      held-out perplexity on trained adapters); --codec auto alone keeps 10% (~26x smaller, lossy)
      the sparse codecs keep sign x one scale per tensor: on trained adapters that costs a lot of
      quality; q8 / q4 (group-wise int8 / int4, G values per bf16 group maximum, --group 32:
      8.5 / 4.5 bits a value) and rice-q8 (top-K at --density plus an 8-bit magnitude each) keep magnitudes
      --global: exact ComPEFT (top-K and sigma over the whole adapter, values alpha*sigma*sign)
  lorapack decompress FILE OUT_DIR
      writes a PEFT folder (adapter_config.json, adapter_model.safetensors) with the decoded factors
  lorapack inspect FILE
      prints the manifest, each tensor's codec, density and size, and the compression ratio
  lorapack import-meteora CHECKPOINT OUT_DIR [--tasks a,b,c|FILE] [--config adapter_config.json] [--alpha A]
                          [--top-k 2] [--temperature T] [--base NAME]
      a MeteoRA checkpoint (.safetensors, or a folder with one) -> OUT_DIR/adapters/<task>/ (one PEFT
      adapter per stacked task LoRA) and OUT_DIR/router/ (loraplex.router/v1 bundle of the moe_gates);
      tasks default to tasks.txt / tasks.json next to the checkpoint, else MeteoRA's 28-task order;
      r, lora_alpha and use_rslora come from --config or the adapter_config.json next to the checkpoint
  lorapack import-mola CHECKPOINT OUT_DIR --experts N[,N...] --top-k K[,K...] [--rank r] [--alpha A]
                       [--config adapter_config.json] [--prefix expert] [--base NAME]
      a MoLA checkpoint (lora_A_{i} / lora_B_{i} / router.router.weight) -> OUT_DIR/adapters/PREFIX-<i>/
      and OUT_DIR/router/; --experts and --top-k take one value, one per layer, or one per equal
      group of layers (MoLA's 2,4,6,8); expert i has no modules in layers with fewer experts
      serve the result with --adapter-dir OUT_DIR/adapters --router NAME=OUT_DIR/router
`

// Exit codes: 0 success, 1 failure (missing or corrupt input, I/O), 2 bad usage.
const (
	exitFail  = 1
	exitUsage = 2
)

// errUsage marks command-line mistakes.
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "compress":
		err = compress(args[1:], stdout, stderr)
	case "decompress":
		err = decompress(args[1:], stdout)
	case "inspect":
		err = inspect(args[1:], stdout)
	case "import-meteora":
		err = importMeteoRA(args[1:], stdout)
	case "import-mola":
		err = importMoLA(args[1:], stdout)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "lorapack: %v\n%s", err, usage)
		return exitUsage
	}
	fmt.Fprintf(stderr, "lorapack %s: %v\n", args[0], err)
	return exitFail
}

// parse parses flags that may come before, between or after the positional arguments (Go's flag
// package stops at the first positional one) and checks their number.
func parse(fs *flag.FlagSet, args []string, want int) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != want {
		return nil, fmt.Errorf("%w: %s takes %d arguments, got %d", errUsage, fs.Name(), want, len(pos))
	}
	return pos, nil
}

func compress(args []string, stdout, stderr io.Writer) error {
	opt := adaptercache.DefaultCompressOptions()
	fs := flag.NewFlagSet("compress", flag.ContinueOnError)
	fs.Float64Var(&opt.Density, "density", opt.Density, "fraction of each factor's values kept, 0 < K <= 1")
	fs.StringVar(&opt.Codec, "codec", opt.Codec, "dense, ternary, bitmap, rice, auto, q8, q4 or rice-q8")
	fs.IntVar(&opt.Group, "group", 0, "q8 / q4 group size: 16, 32 (default), 64 or 128")
	fs.BoolVar(&opt.Global, "global", false, "exact ComPEFT: global top-K and alpha*sigma")
	fs.BoolVar(&opt.DenseA, "dense-a", opt.DenseA, "keep lora_A dense and compress only lora_B (much better quality on trained adapters; about 2x smaller instead of 26x)")
	fs.Float64Var(&opt.AlphaC, "alpha", opt.AlphaC, "ComPEFT's alpha_c (with --global)")
	pos, err := parse(fs, args, 2)
	if err != nil {
		return err
	}
	if c, _ := lorapack.ParseCodec(opt.Codec); c != lorapack.Dense && c != lorapack.Q8 && c != lorapack.Q4 && !(opt.Density > 0 && opt.Density <= 1) {
		return fmt.Errorf("%w: --density %v: want 0 < K <= 1", errUsage, opt.Density)
	}
	dir, out := pos[0], pos[1]
	if st, err := os.Stat(dir); err != nil {
		return err
	} else if !st.IsDir() {
		return fmt.Errorf("%s is not a PEFT folder", dir)
	}
	lastPct := -1
	opt.Progress = func(done, total int) {
		if pct := 100 * done / total; pct/10 != lastPct/10 || done == total {
			fmt.Fprintf(stderr, "compress: %d/%d tensors (%d%%)\n", done, total, pct)
			lastPct = pct
		}
	}
	// Write next to the target and rename, so a failed run never leaves a truncated file behind.
	tmp, err := os.CreateTemp(filepath.Dir(out), ".lorapack-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	m, err := adaptercache.CompressPEFT(dir, tmp, opt)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	st, err := os.Stat(out)
	if err != nil {
		return err
	}
	s := summarize(m, st.Size())
	fmt.Fprintf(stdout, "wrote %s: %d tensors, %d bytes; %.1fx smaller than bf16 (%d bytes), %.1fx smaller than the original %s\n",
		out, len(m.Tensors), st.Size(), s.ratioBF16(), s.bf16, s.ratioOrig(), s.origDTypes)
	return nil
}

func decompress(args []string, stdout io.Writer) error {
	pos, err := parse(flag.NewFlagSet("decompress", flag.ContinueOnError), args, 2)
	if err != nil {
		return err
	}
	if err := adaptercache.DecompressFile(pos[0], pos[1]); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s and %s in %s\n", adaptercache.PEFTConfigFile, adaptercache.PEFTWeightsFile, pos[1])
	return nil
}
