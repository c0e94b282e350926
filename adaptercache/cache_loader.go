package adaptercache

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/loraplex/loraplex/internal/confine"
	"github.com/loraplex/loraplex/model"
)

// DefaultLoader loads a PEFT adapter folder with LoadPEFT, or a lorapack file with
// LoadCompressed. Any other file is refused with an error naming the adapter.
func DefaultLoader(path, name string, cfg *model.Config) (*model.HostAdapter, io.Closer, error) {
	return loadPath(nil, path, name, cfg, nil)
}

// LoaderIn is DefaultLoader, opening every file it
// reads beneath roots (internal/confine; nil: anywhere): the adapter's folder or lorapack file
// and each file inside the folder, links followed only while they stay inside the roots. With
// u (a backend that decodes some codecs itself), lorapack files go through
// LoadCompressedEncoded, so their q4 / q8 tensors reach the backend still encoded. The cache
// uses it with Options.Roots and its backend when no Loader is set.
func LoaderIn(roots *confine.Roots, u model.EncodedUploader) LoaderFunc {
	return func(path, name string, cfg *model.Config) (*model.HostAdapter, io.Closer, error) {
		return loadPath(roots, path, name, cfg, u)
	}
}

func loadPath(roots *confine.Roots, path, name string, cfg *model.Config, u model.EncodedUploader) (*model.HostAdapter, io.Closer, error) {
	st, err := roots.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("adapter %q: %w", name, err)
	}
	if st.IsDir() {
		return loadPEFT(roots, path, name, cfg)
	}
	if !st.Mode().IsRegular() {
		return nil, nil, &AdapterError{Adapter: name, File: path, Err: confine.ErrNotRegular}
	}
	if isCompressed(roots, path) {
		if u != nil {
			return loadCompressedEncoded(roots, path, name, cfg, u.DecodesOnDevice)
		}
		return loadCompressed(roots, path, name, cfg)
	}
	return nil, nil, &AdapterError{Adapter: name, File: path, Err: fmt.Errorf(
		"%w: neither a PEFT adapter folder nor a lorapack file", model.ErrUnsupported)}
}

// ValidName accepts names that are safe as a single path element: a request's model name
// becomes DIR/NAME for adapters found in Options.Dirs.
func ValidName(name string) bool {
	if name == "" || name == "." || name == ".." || strings.HasPrefix(name, ".") || len(name) > 255 {
		return false
	}
	return !strings.ContainsAny(name, "/\\\x00")
}

// LorapackExt is the extension of lorapack files. In an adapter directory a file NAME.lorapack
// answers to NAME (as a folder NAME does), so compressing an adapter keeps its name.
const LorapackExt = ".lorapack"

// DirPaths are where adapter name may be in the adapter directory dir, in the order they are
// tried: DIR/NAME (a PEFT folder or any lorapack file), then DIR/NAME.lorapack. The one rule for
// the cache and the server's name registry.
func DirPaths(dir, name string) [2]string {
	p := filepath.Join(dir, name)
	return [2]string{p, p + LorapackExt}
}

// lookup returns name's entry, registering the first of DirPaths that exists in the first of
// Options.Dirs that has one.
// Called with mu held (the Stat happens only for names not yet registered).
func (c *Cache) lookup(name string) (*entry, error) {
	if e := c.entries[name]; e != nil {
		return e, nil
	}
	if ValidName(name) {
		for _, dir := range c.opt.Dirs {
			for _, p := range DirPaths(dir, name) {
				_, err := c.opt.Roots.Stat(p)
				if errors.Is(err, confine.ErrOutside) {
					// DIR/NAME links out of every root: refused, not skipped, so the operator
					// sees why the adapter is not served.
					return nil, fmt.Errorf("adapter %q: %w", name, err)
				}
				if err == nil {
					e := &entry{name: name, path: p, state: StateDisk}
					c.entries[name] = e
					return e, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownAdapter, name)
}
