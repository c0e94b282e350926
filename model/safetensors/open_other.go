//go:build !unix

package safetensors

import (
	"io"
	"os"
)

// mapFile falls back to reading the whole file where mmap is not available.
func mapFile(path string, fd *os.File) ([]byte, func() error, error) {
	data, err := io.ReadAll(fd)
	if err != nil {
		return nil, nil, err
	}
	return data, func() error { return nil }, nil
}
