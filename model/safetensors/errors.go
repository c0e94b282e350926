package safetensors

import "fmt"

// FormatError reports a malformed safetensors file or shard index. Tensor is empty when the
// problem is not specific to one tensor.
type FormatError struct {
	File   string
	Tensor string
	Msg    string
}

func (e *FormatError) Error() string {
	if e.Tensor == "" {
		return fmt.Sprintf("safetensors %s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("safetensors %s: tensor %q: %s", e.File, e.Tensor, e.Msg)
}

func formatErr(file, tensor, format string, args ...any) *FormatError {
	return &FormatError{File: file, Tensor: tensor, Msg: fmt.Sprintf(format, args...)}
}
