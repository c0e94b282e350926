//go:build unix

package confine

import (
	"errors"
	"os"
	"syscall"
)

// openNonBlocking opens path read-only with O_NONBLOCK, so opening a FIFO (which waits for a
// writer) or a device returns at once; the caller refuses them by their mode. O_NONBLOCK does
// not change reads of regular files. path is resolved, so O_NOFOLLOW only refuses a last
// component swapped for a link since.
func openNonBlocking(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY|syscall.O_NOFOLLOW, 0)
}

func isNotDir(err error) bool { return errors.Is(err, syscall.ENOTDIR) }
