//go:build !unix

package confine

import "os"

// openNonBlocking opens path read-only; there are no FIFOs to block on outside unix.
func openNonBlocking(path string) (*os.File, error) { return os.Open(path) }

func isNotDir(error) bool { return false }
