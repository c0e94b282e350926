// Package confine opens the files of adapters and routers beneath a set of allowed roots. It is
// the one place where loraplex decides whether a path may be read: every loader of adapter
// folders, lorapack files and router bundles opens its files through a *Roots.
//
// The check is made on the file actually opened. A path is resolved component by component,
// following every symbolic link (Resolve), and must end inside one of the roots, themselves
// resolved the same way; the file is then opened by that resolved path without blocking (a FIFO
// or a device never hangs the open), must be a regular file, and must be the very file (same
// device and inode) that the path resolves to inside a root once it is open, so a link swapped
// between the check and the open is caught. Links are therefore fine as long as they stay inside
// the roots: Kubernetes volumes (`..data -> ..2026_01_01_00_00_00.1`, `file -> ..data/file`)
// work, and so do links from one root into another and absolute links between files of a root.
// (Linux's openat2 with RESOLVE_BENEATH would refuse both of those, which is why the check is a
// resolution in Go; it also keeps the package pure Go, CGO_ENABLED=0, on every OS.)
//
// A path outside every root is refused with ErrOutside whether it exists or not, so the answer
// says nothing about the file system beyond the roots; error messages name the path as given,
// never a link's target and never a file's bytes.
//
// A nil *Roots confines nothing (trusted callers such as tests and command-line tools) but still
// opens regular files only, without blocking, and bounds what ReadFile reads.
package confine

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// MaxConfigBytes bounds a JSON config read through ReadFile (adapter_config.json, router.json):
// real ones are a few kilobytes, and a config linked to /dev/zero or grown without end must not
// exhaust memory.
const MaxConfigBytes = 1 << 20

// maxLinks bounds the symbolic links followed while resolving one path, like the kernel's
// ELOOP limit.
const maxLinks = 40

// Errors wrapped (in an *fs.PathError naming the path as given) by the functions of this package.
var (
	ErrOutside    = errors.New("outside the allowed roots")
	ErrNotRegular = errors.New("not a regular file")
	ErrTooLarge   = errors.New("file too large")
	errLoop       = errors.New("too many levels of symbolic links")
)

// Roots is a set of folders (or single files) that paths must resolve inside.
type Roots struct {
	paths []string
}

// New returns the roots paths. With no paths it returns nil: nothing is confined.
func New(paths ...string) *Roots {
	var r Roots
	for _, p := range paths {
		if p != "" {
			r.paths = append(r.paths, p)
		}
	}
	if len(r.paths) == 0 {
		return nil
	}
	return &r
}

// Paths returns the roots as given.
func (r *Roots) Paths() []string {
	if r == nil {
		return nil
	}
	return append([]string(nil), r.paths...)
}

// Resolve returns the real path of path (absolute, no links) when it lies inside a root.
// Errors wrap ErrOutside (existing or not), fs.ErrNotExist (inside a root but missing), or the
// error of a link that cannot be read. A nil Roots resolves without confining.
func (r *Roots) Resolve(path string) (string, error) {
	real, exists, err := resolve(path)
	// Outside comes first, even over an error on the way (a folder we may not search), so
	// paths outside the roots all get one answer.
	if r != nil && (real == "" || !r.contains(real)) {
		return "", &fs.PathError{Op: "open", Path: path, Err: ErrOutside}
	}
	if err != nil {
		return "", &fs.PathError{Op: "open", Path: path, Err: err}
	}
	if !exists {
		return "", &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
	}
	return real, nil
}

// contains reports whether real (resolved) lies inside, or is, one of the roots.
func (r *Roots) contains(real string) bool {
	for _, root := range r.paths {
		rr, exists, err := resolve(root)
		if err != nil || !exists {
			continue
		}
		if within(rr, real) {
			return true
		}
	}
	return false
}

// within reports whether path is root or below it; both are clean absolute paths.
func within(root, path string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}

// Stat is os.Stat of a path resolved inside the roots.
func (r *Roots) Stat(path string) (fs.FileInfo, error) {
	real, err := r.Resolve(path)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(real)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: path, Err: unwrapPath(err)}
	}
	return fi, nil
}

// Open opens the regular file path for reading once it resolves inside the roots, and checks
// that the file opened is the one the path resolves to (see the package comment).
func (r *Roots) Open(path string) (*os.File, error) {
	real, err := r.Resolve(path)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*os.File, error) { return nil, &fs.PathError{Op: "open", Path: path, Err: err} }
	// Refuse what is not a regular file before opening it: opening a device can have effects.
	if fi, err := os.Stat(real); err != nil {
		return fail(unwrapPath(err))
	} else if !fi.Mode().IsRegular() {
		return fail(ErrNotRegular)
	}
	f, err := openNonBlocking(real)
	if err != nil {
		return fail(unwrapPath(err))
	}
	opened, err := f.Stat()
	if err != nil {
		f.Close()
		return fail(unwrapPath(err))
	}
	if !opened.Mode().IsRegular() {
		f.Close()
		return fail(ErrNotRegular)
	}
	// The path may have changed between Resolve and the open (a component swapped for a link):
	// the file opened must still be the one the path resolves to inside a root.
	again, err := r.Resolve(path)
	if err != nil {
		f.Close()
		return nil, err
	}
	if now, err := os.Stat(again); err != nil || !os.SameFile(opened, now) {
		f.Close()
		return fail(fmt.Errorf("%w: the file changed while it was opened", ErrOutside))
	}
	return f, nil
}

// ReadFile reads the regular file path (see Open), refusing files larger than limit bytes with
// ErrTooLarge before reading them, and files that grow past limit while read.
func (r *Roots) ReadFile(path string, limit int64) ([]byte, error) {
	f, err := r.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tooLarge := &fs.PathError{Op: "read", Path: path, Err: fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)}
	fi, err := f.Stat()
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: path, Err: unwrapPath(err)}
	}
	if fi.Size() > limit {
		return nil, tooLarge
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: path, Err: unwrapPath(err)}
	}
	if int64(len(data)) > limit {
		return nil, tooLarge
	}
	return data, nil
}

// unwrapPath drops an *fs.PathError's own path (the resolved one), keeping its cause, so errors
// name only the path as given.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// resolve returns the absolute path that path names once every symbolic link in it is followed,
// and whether it exists. It walks one component at a time, as the kernel does: ".." applies to
// the folder reached so far (after links), and a link's target is walked in place of the link.
// A missing component (or a non-folder in the middle) ends the walk: the rest is joined
// lexically, since components that do not exist cannot be links. On an error the path reached
// so far is returned with it.
func resolve(path string) (string, bool, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", false, err
	}
	vol := filepath.VolumeName(abs)
	top := vol + string(filepath.Separator)
	cur := top
	rest := splitPath(abs[len(vol):])
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, c)
		fi, err := os.Lstat(next)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || isNotDir(err) {
				return filepath.Join(append([]string{next}, rest...)...), false, nil
			}
			return next, false, unwrapPath(err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if len(rest) > 0 && !fi.IsDir() {
				// A file used as a folder: the path cannot exist.
				return filepath.Join(append([]string{next}, rest...)...), false, nil
			}
			cur = next
			continue
		}
		if links++; links > maxLinks {
			return next, false, errLoop
		}
		target, err := os.Readlink(next)
		if err != nil {
			return next, false, unwrapPath(err)
		}
		if tv := filepath.VolumeName(target); filepath.IsAbs(target) || tv != "" {
			if tv != "" {
				vol, top = tv, tv+string(filepath.Separator)
			}
			cur = top
			target = target[len(tv):]
		}
		rest = append(splitPath(target), rest...)
	}
	return cur, true, nil
}

// splitPath splits a path (without volume name) into its components.
func splitPath(p string) []string {
	return strings.FieldsFunc(p, func(r rune) bool { return r < 0x80 && os.IsPathSeparator(uint8(r)) })
}
