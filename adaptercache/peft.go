package adaptercache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"

	"github.com/loraplex/loraplex/internal/confine"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// File names of a PEFT adapter folder.
const (
	PEFTConfigFile  = "adapter_config.json"
	PEFTWeightsFile = "adapter_model.safetensors"
	peftPickleFile  = "adapter_model.bin"
)

// LoadPEFT loads the PEFT LoRA adapter in dir and validates it against the base model.
//
// The adapter's tensors are copied out of the file into private memory (see ownTensors), so the
// file may change or go away afterwards without touching the loaded adapter, and every value is
// checked to be finite. The returned io.Closer holds nothing; it is returned for symmetry with
// loaders whose tensors alias a mapping.
//
// Errors: an *AdapterError (naming adapter, file and tensor) when the adapter is malformed or
// does not fit the base model, matching errors.Is(err, model.ErrUnsupported) when it uses an
// option loraplex does not implement; otherwise an I/O error (such as fs.ErrNotExist).
func LoadPEFT(dir, name string, base *model.Config) (*model.HostAdapter, io.Closer, error) {
	return loadPEFT(nil, dir, name, base)
}

// loadPEFT is LoadPEFT reading every file beneath roots (nil: anywhere), the config through
// confine.MaxConfigBytes.
func loadPEFT(roots *confine.Roots, dir, name string, base *model.Config) (*model.HostAdapter, io.Closer, error) {
	cfgPath := filepath.Join(dir, PEFTConfigFile)
	raw, err := roots.ReadFile(cfgPath, confine.MaxConfigBytes)
	if err != nil {
		return nil, nil, fmt.Errorf("adapter %q: %w", name, err)
	}
	cfg, err := ParsePEFTConfig(raw)
	if err != nil {
		return nil, nil, &AdapterError{Adapter: name, File: cfgPath, Err: err}
	}
	stPath := filepath.Join(dir, PEFTWeightsFile)
	f, err := openSafetensors(roots, stPath)
	if errors.Is(err, fs.ErrNotExist) {
		if _, perr := roots.Stat(filepath.Join(dir, peftPickleFile)); perr == nil {
			return nil, nil, &AdapterError{Adapter: name, File: filepath.Join(dir, peftPickleFile), Err: fmt.Errorf(
				"%w: torch pickle adapters are not supported (loading one can run arbitrary code); convert it to %s, e.g. in Python: "+
					"safetensors.torch.save_file(torch.load(%q, weights_only=True), %q, metadata={\"format\": \"pt\"})",
				model.ErrUnsupported, PEFTWeightsFile, peftPickleFile, PEFTWeightsFile)}
		}
	}
	if err != nil {
		var fe *safetensors.FormatError
		if errors.As(err, &fe) {
			return nil, nil, &AdapterError{Adapter: name, File: stPath, Tensor: fe.Tensor, Err: err}
		}
		return nil, nil, fmt.Errorf("adapter %q: %w", name, err)
	}
	defer f.Close()
	a, err := buildAdapter(f, cfg, name, dir, base)
	if err != nil {
		return nil, nil, err
	}
	if err := ownTensors(a); err != nil { // and checks every value
		return nil, nil, err
	}
	return a, closeFunc(func() error { return nil }), nil
}

// openSafetensors maps a safetensors file opened beneath roots (nil: anywhere).
func openSafetensors(roots *confine.Roots, path string) (*safetensors.File, error) {
	fd, err := roots.Open(path)
	if err != nil {
		return nil, err
	}
	defer fd.Close() // the mapping does not need the descriptor
	return safetensors.OpenFile(path, fd)
}

// factors gathers the tensor names of one module while scanning the file.
type factors struct {
	key  loraKey
	a, b string
}

func buildAdapter(f *safetensors.File, cfg *PEFTConfig, name, dir string, base *model.Config) (*model.HostAdapter, error) {
	fail := func(tensor string, err error) error {
		return &AdapterError{Adapter: name, File: f.Path(), Tensor: tensor, Err: err}
	}
	mods := map[string]*factors{}
	for _, t := range f.Names() {
		k, err := parseKey(t)
		if err != nil {
			return nil, fail(t, err)
		}
		m := mods[k.module]
		if m == nil {
			m = &factors{key: k}
			mods[k.module] = m
		}
		slot := &m.a
		if k.isB {
			slot = &m.b
		}
		if *slot != "" {
			return nil, fail(t, fmt.Errorf("same factor as %q (keys with and without the adapter name)", *slot))
		}
		*slot = t
	}
	if len(mods) == 0 {
		return nil, fail("", errNoTensors)
	}
	a := &model.HostAdapter{Name: name, Path: dir, Modules: make([][model.NumProj]*model.HostLoRA, base.NumLayers)}
	names := make([]string, 0, len(mods))
	for n := range mods {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		m := mods[n]
		lora, tensor, err := loadModule(f, cfg, m, base)
		if err != nil {
			return nil, fail(tensor, err)
		}
		a.Modules[m.key.layer][m.key.proj] = lora
		a.Bytes += int64(len(lora.A.Data) + len(lora.B.Data))
	}
	// peft writes both factors of every module it adapted; a targeted module without tensors means
	// a truncated file or an adapter for a different base model.
	if cfg.targets != nil {
		for l := range base.NumLayers {
			for p := model.Proj(0); p < model.NumProj; p++ {
				mod := moduleName(l, p)
				if a.Modules[l][p] == nil && cfg.Targets(mod) {
					return nil, fail("", fmt.Errorf("module %s is targeted by %s but has no lora_A / lora_B tensors", mod, PEFTConfigFile))
				}
			}
		}
	}
	return a, nil
}

func moduleName(layer int, p model.Proj) string {
	return fmt.Sprintf("model.layers.%d.%s.%s", layer, p.Block(), p)
}

// loadModule checks one module's factors against the config and the base model. It returns the
// tensor to blame on failure.
func loadModule(f *safetensors.File, cfg *PEFTConfig, m *factors, base *model.Config) (*model.HostLoRA, string, error) {
	k := m.key
	if m.a == "" {
		return nil, m.b, fmt.Errorf("module %s has lora_B but no lora_A", k.module)
	}
	if m.b == "" {
		return nil, m.a, fmt.Errorf("module %s has lora_A but no lora_B", k.module)
	}
	if k.layer >= base.NumLayers {
		return nil, m.a, fmt.Errorf("layer %d is beyond the base model's %d layers", k.layer, base.NumLayers)
	}
	if !cfg.Targets(k.module) {
		return nil, m.a, fmt.Errorf("module %s is not selected by target_modules / layers_to_transform / exclude_modules in %s", k.module, PEFTConfigFile)
	}
	rank, _ := cfg.RankAlpha(k.module)
	out, in := base.ProjShape(k.proj)
	ta, _ := f.Tensor(m.a)
	tb, _ := f.Tensor(m.b)
	ha, err := hostTensor(ta)
	if err != nil {
		return nil, m.a, err
	}
	hb, err := hostTensor(tb)
	if err != nil {
		return nil, m.b, err
	}
	if len(ta.Shape) != 2 || ta.Shape[1] != in {
		return nil, m.a, fmt.Errorf("lora_A shape %v, want [rank, %d] for %s", ta.Shape, in, k.proj)
	}
	if ta.Shape[0] != rank {
		return nil, m.a, fmt.Errorf("lora_A has rank %d, %s gives %d for %s", ta.Shape[0], PEFTConfigFile, rank, k.module)
	}
	if len(tb.Shape) != 2 || tb.Shape[0] != out || tb.Shape[1] != rank {
		return nil, m.b, fmt.Errorf("lora_B shape %v, want [%d, %d] for %s of rank %d", tb.Shape, out, rank, k.proj, rank)
	}
	return &model.HostLoRA{A: ha, B: hb, Rank: rank, Scale: cfg.Scale(k.module)}, "", nil
}

func hostTensor(t safetensors.Tensor) (model.HostTensor, error) {
	dt, err := model.ParseDType(t.DType)
	if err != nil {
		return model.HostTensor{}, fmt.Errorf("dtype %s: %w (want F32, BF16 or F16)", t.DType, model.ErrUnsupported)
	}
	return model.HostTensor{Name: t.Name, DType: dt, Shape: t.Shape, Data: t.Data}, nil
}
