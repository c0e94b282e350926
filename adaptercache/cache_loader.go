package adaptercache

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/loraplex/loraplex/model"
)

// DefaultLoader loads a PEFT adapter folder with LoadPEFT. A path that is a file is refused with
// a clear error: compressed single-file adapters are not wired into the cache yet.
func DefaultLoader(path, name string, cfg *model.Config) (*model.HostAdapter, io.Closer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("adapter %q: %w", name, err)
	}
	if !st.IsDir() {
		return nil, nil, &AdapterError{Adapter: name, File: path, Err: fmt.Errorf(
			"%w: not a PEFT adapter folder (single-file adapters are not supported by the cache yet)", model.ErrUnsupported)}
	}
	return LoadPEFT(path, name, cfg)
}

// ValidName accepts names that are safe as a single path element: a request's model name
// becomes DIR/NAME for adapters found in Options.Dirs.
func ValidName(name string) bool {
	if name == "" || name == "." || name == ".." || strings.HasPrefix(name, ".") || len(name) > 255 {
		return false
	}
	return !strings.ContainsAny(name, "/\\\x00")
}

// lookup returns name's entry, registering DIR/NAME from the first of Options.Dirs that has it.
// Called with mu held (the Stat happens only for names not yet registered).
func (c *Cache) lookup(name string) (*entry, error) {
	if e := c.entries[name]; e != nil {
		return e, nil
	}
	if ValidName(name) {
		for _, dir := range c.opt.Dirs {
			p := filepath.Join(dir, name)
			if _, err := os.Stat(p); err == nil {
				e := &entry{name: name, path: p, state: StateDisk}
				c.entries[name] = e
				return e, nil
			}
		}
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownAdapter, name)
}
