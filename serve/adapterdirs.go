package serve

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

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
