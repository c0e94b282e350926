package adaptercache

import (
	"fmt"
	"strings"
)

// AdapterError reports an adapter that is malformed or uses an unsupported option, as opposed to
// an I/O failure (a missing folder or an unreadable file is returned as the os error, wrapped with
// the path). errors.Is(err, model.ErrUnsupported) tells an option loraplex does not implement from
// a broken file. File and Tensor are empty where they do not apply.
type AdapterError struct {
	Adapter string
	File    string
	Tensor  string
	Err     error
}

func (e *AdapterError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "adapter %q", e.Adapter)
	if e.File != "" {
		fmt.Fprintf(&b, ": %s", e.File)
	}
	if e.Tensor != "" {
		fmt.Fprintf(&b, ": tensor %q", e.Tensor)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}

func (e *AdapterError) Unwrap() error { return e.Err }
