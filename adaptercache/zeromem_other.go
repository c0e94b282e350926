//go:build !unix

package adaptercache

// zeroPages returns n zero bytes (a Go allocation where anonymous mappings are not available).
func zeroPages(n int) ([]byte, func() error, error) {
	return make([]byte, n), func() error { return nil }, nil
}
