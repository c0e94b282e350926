package safetensors

import (
	"errors"
	"runtime/debug"
)

// ErrFileChanged reports that a file shrank under its mapping while it was being read: a page
// past the file's new end faults (SIGBUS), which would otherwise kill the process. A plain cp
// over a served file truncates it first, so this is what overwriting a file in place looks like.
var ErrFileChanged = errors.New("the file changed on disk while it was being read (truncated or overwritten in place)")

// ReadMapped runs read, which reads memory that may alias a File's mapping, on the calling
// goroutine with debug.SetPanicOnFault on, and returns a fault as ErrFileChanged instead of
// crashing. Other panics go on as they were. The setting is per goroutine, so read must not hand
// the mapping to other goroutines.
func ReadMapped(read func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if !IsFault(r) {
				panic(r)
			}
			err = ErrFileChanged
		}
	}()
	return read()
}

// CopyMapped copies src, which may alias a File's mapping, into dst (ReadMapped's guard).
func CopyMapped(dst, src []byte) error {
	return ReadMapped(func() error { copy(dst, src); return nil })
}

// IsFault reports whether a recovered panic value is a memory fault that
// debug.SetPanicOnFault turned into a panic (the runtime's error then carries the address).
func IsFault(r any) bool {
	_, ok := r.(faultAddr)
	return ok
}

// faultAddr is the method runtime errors of memory faults have (runtime/debug.SetPanicOnFault).
type faultAddr interface{ Addr() uintptr }
