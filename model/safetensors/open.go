package safetensors

import "os"

// Open maps path read-only and validates it. The tensors alias the mapping until Close.
func Open(path string) (*File, error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	// The mapping outlives the descriptor, so it can be closed right away.
	defer fd.Close()
	return OpenFile(path, fd)
}

// OpenFile is Open of a file already open for reading (one opened beneath allowed roots, see
// internal/confine), named path in errors; the caller still closes fd, which the mapping does
// not need.
func OpenFile(path string, fd *os.File) (*File, error) {
	data, unmap, err := mapFile(path, fd)
	if err != nil {
		return nil, err
	}
	f, err := Parse(path, data)
	if err != nil {
		unmap()
		return nil, err
	}
	f.unmap = unmap
	return f, nil
}
