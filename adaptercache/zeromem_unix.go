//go:build unix

package adaptercache

import (
	"sync"
	"syscall"
)

// zeroPages returns n zero bytes in an anonymous private mapping, and its release. Its pages
// cost nothing until written (a reused Go heap span would be cleared first), so tensors left
// encoded in LoadCompressedEncoded's buffer cost neither writes nor memory.
func zeroPages(n int) ([]byte, func() error, error) {
	if n == 0 {
		return nil, func() error { return nil }, nil
	}
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return nil, nil, err
	}
	// Once: unmapping twice could unmap whatever was mapped at that address since.
	return b, sync.OnceValue(func() error { return syscall.Munmap(b) }), nil
}
