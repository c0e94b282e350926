package serve

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// validAdapterName accepts names that are safe as a single path element: routers such as the
// Gateway API Inference Extension send whatever model name the client gave, and that name
// becomes DIR/NAME for on-demand loading.
func validAdapterName(name string) bool {
	if name == "" || name == "." || name == ".." || strings.HasPrefix(name, ".") || len(name) > 255 {
		return false
	}
	return !strings.ContainsAny(name, "/\\\x00")
}

// inflightLoads makes concurrent requests for the same not-yet-loaded adapter share one load.
type inflightLoads struct {
	mu sync.Mutex
	m  map[string]*loadCall
}

type loadCall struct {
	done chan struct{}
	err  error
}

// resolveAdapter returns the named adapter with a reference held, loading it from the first
// adapter directory that has a folder (or compressed file) of that name when it is not resident.
func (e *Engine) resolveAdapter(name string) (*residentAdapter, error) {
	if a := e.adapters.get(name); a != nil {
		return a, nil
	}
	notFound := errorf(KindNotFound, "model", "the model `%s` does not exist", name)
	if len(e.opt.AdapterDirs) == 0 || !validAdapterName(name) {
		return nil, notFound
	}
	path := ""
	for _, dir := range e.opt.AdapterDirs {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		return nil, notFound
	}
	e.loads.mu.Lock()
	if e.loads.m == nil {
		e.loads.m = map[string]*loadCall{}
	}
	c := e.loads.m[name]
	if c == nil {
		c = &loadCall{done: make(chan struct{})}
		e.loads.m[name] = c
		e.loads.mu.Unlock()
		c.err = e.LoadAdapter(name, path)
		e.loads.mu.Lock()
		delete(e.loads.m, name)
		close(c.done)
	}
	e.loads.mu.Unlock()
	<-c.done
	if c.err != nil {
		return nil, c.err
	}
	if a := e.adapters.get(name); a != nil {
		return a, nil
	}
	return nil, notFound // unloaded again between the load and now
}

// CheckAdapterPath resolves path (following symlinks) and requires it to lie inside one of the
// configured adapter roots, so the runtime load API cannot read arbitrary files.
func (e *Engine) CheckAdapterPath(path string) (string, error) {
	if len(e.opt.AdapterRoots) == 0 {
		return "", errorf(KindForbidden, "lora_path", "loading adapters by path is disabled: no adapter root is configured")
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", errorf(KindNotFound, "lora_path", "adapter path %q does not exist", path)
		}
		return "", &Error{Kind: KindInvalid, Param: "lora_path", Msg: fmt.Sprintf("adapter path %q", path), Err: err}
	}
	real, err = filepath.Abs(real)
	if err != nil {
		return "", &Error{Kind: KindInvalid, Param: "lora_path", Msg: "adapter path", Err: err}
	}
	for _, root := range e.opt.AdapterRoots {
		r, err := filepath.EvalSymlinks(root)
		if err != nil {
			continue
		}
		r, _ = filepath.Abs(r)
		if rel, err := filepath.Rel(r, real); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && rel != "." {
			return real, nil
		}
	}
	return "", errorf(KindForbidden, "lora_path", "adapter path %q is outside the adapter roots", path)
}
