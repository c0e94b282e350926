package serve

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/loraplex/loraplex/internal/confine"
)

// CheckAdapterPath is the runtime load API's gate: it refuses every path when no adapter root
// is configured, and otherwise returns path's real location once it resolves inside the roots
// (Options.AdapterRoots). The loaders check every file again as they open it, so a path that
// passes here and changes afterwards is still confined.
func (e *Engine) CheckAdapterPath(path string) (string, error) {
	if e.roots == nil {
		return "", errorf(KindForbidden, "lora_path", "loading adapters by path is disabled: no adapter root is configured")
	}
	real, err := e.roots.Resolve(path)
	if err != nil {
		return "", fileError("lora_path", fmt.Sprintf("adapter path %q", path), err)
	}
	return real, nil
}

// fileError maps an error of opening a file beneath the roots (internal/confine) to a kind, or
// returns nil for other errors: outside the roots is KindForbidden (the same answer whether the
// path exists or not), missing KindNotFound, not a regular file or a config over its size limit
// KindUnprocessable. Messages name the path as given, never a file's bytes.
func fileError(param, msg string, err error) error {
	var kind Kind
	switch {
	case errors.Is(err, confine.ErrOutside):
		kind = KindForbidden
		msg += " (allowed roots: --adapter-root, --adapter-dir, and the command line's --adapter and --router paths)"
	case errors.Is(err, fs.ErrNotExist):
		kind = KindNotFound
	case errors.Is(err, confine.ErrNotRegular), errors.Is(err, confine.ErrTooLarge):
		kind = KindUnprocessable
	default:
		var pe *fs.PathError
		if !errors.As(err, &pe) {
			return nil
		}
		kind = KindUnprocessable
	}
	return &Error{Kind: kind, Param: param, Msg: msg, Err: err}
}
