package confine

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tree builds, under a temporary folder, a root laid out like a Kubernetes volume (a
// timestamped folder, ..data linking to it, files linking through ..data), a second root, and
// an outside folder with a secret; it returns the three folders.
func tree(t testing.TB) (root, other, outside string) {
	t.Helper()
	base := t.TempDir()
	root, other, outside = filepath.Join(base, "root"), filepath.Join(base, "other"), filepath.Join(base, "outside")
	for _, d := range []string{root, other, outside, filepath.Join(root, "..2026_01_01"), filepath.Join(root, "plain")} {
		must(t, os.MkdirAll(d, 0o755))
	}
	write(t, filepath.Join(root, "..2026_01_01", "adapter_config.json"), `{"r": 8}`)
	write(t, filepath.Join(root, "plain", "adapter_config.json"), `{"r": 4}`)
	write(t, filepath.Join(other, "shared.json"), `{"r": 2}`)
	write(t, filepath.Join(outside, "secret"), "SECRET-BYTES")
	must(t, os.Symlink("..2026_01_01", filepath.Join(root, "..data")))
	must(t, os.Symlink("..data/adapter_config.json", filepath.Join(root, "adapter_config.json")))
	must(t, os.Symlink(filepath.Join(root, "plain", "adapter_config.json"), filepath.Join(root, "absolute_inside.json")))
	must(t, os.Symlink(filepath.Join(other, "shared.json"), filepath.Join(root, "to_other_root.json")))
	must(t, os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "escape_file")))
	must(t, os.Symlink(outside, filepath.Join(root, "escape_dir")))
	must(t, os.Symlink("../outside/secret", filepath.Join(root, "escape_relative")))
	must(t, os.Symlink(filepath.Join(outside, "missing"), filepath.Join(root, "dangling_out")))
	must(t, os.Symlink("nowhere", filepath.Join(root, "dangling_in")))
	must(t, os.Symlink("loop_b", filepath.Join(root, "loop_a")))
	must(t, os.Symlink("loop_a", filepath.Join(root, "loop_b")))
	return root, other, outside
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func write(t testing.TB, path, s string) {
	t.Helper()
	must(t, os.WriteFile(path, []byte(s), 0o644))
}

// Links that stay inside the roots are followed (Kubernetes ..data links, absolute links within
// a root, links from one root into another); the file read is the link's target.
func TestLinksInsideRootsAreFollowed(t *testing.T) {
	root, other, _ := tree(t)
	r := New(root, other)
	for path, want := range map[string]string{
		filepath.Join(root, "adapter_config.json"):                `{"r": 8}`,
		filepath.Join(root, "..data", "adapter_config.json"):      `{"r": 8}`,
		filepath.Join(root, "absolute_inside.json"):               `{"r": 4}`,
		filepath.Join(root, "to_other_root.json"):                 `{"r": 2}`,
		filepath.Join(root, "plain", "..", "adapter_config.json"): `{"r": 8}`,
	} {
		got, err := r.ReadFile(path, MaxConfigBytes)
		if err != nil || string(got) != want {
			t.Errorf("ReadFile(%s) = %q, %v; want %q", path, got, err, want)
		}
	}
}

// A path that leaves every root is refused with the same answer whether its target exists or
// not, as a folder, as a single file inside a folder, or through a dangling link; the answer
// quotes neither the link's target nor the file's bytes.
func TestOutsideIsRefusedAlike(t *testing.T) {
	root, other, outside := tree(t)
	r := New(root, other)
	paths := []string{
		filepath.Join(root, "escape_file"),
		filepath.Join(root, "escape_relative"),
		filepath.Join(root, "escape_dir", "secret"),
		filepath.Join(root, "escape_dir", "missing"),
		filepath.Join(root, "dangling_out"),
		filepath.Join(root, "..", "outside", "secret"),
		filepath.Join(root, "..", "outside", "missing"),
		filepath.Join(outside, "secret"),
		filepath.Join(outside, "missing", "deeper"),
		filepath.Join(root, "plain", "..", "..", "outside", "secret"),
		"/etc/passwd",
		"/nonexistent/file",
	}
	for _, p := range paths {
		for name, call := range map[string]func() error{
			"Open":     func() error { f, err := r.Open(p); closeIf(f); return err },
			"ReadFile": func() error { _, err := r.ReadFile(p, MaxConfigBytes); return err },
			"Resolve":  func() error { _, err := r.Resolve(p); return err },
			"Stat":     func() error { _, err := r.Stat(p); return err },
		} {
			err := call()
			if !errors.Is(err, ErrOutside) || errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s(%s) = %v, want ErrOutside only", name, p, err)
				continue
			}
			if want := "open " + p + ": outside the allowed roots"; err.Error() != want {
				t.Errorf("%s(%s) says %q, want %q", name, p, err, want)
			}
		}
	}
}

func closeIf(f *os.File) {
	if f != nil {
		f.Close()
	}
}

// Inside a root, a missing file is fs.ErrNotExist (a 404, not a 403), dangling links included.
func TestMissingInsideIsNotFound(t *testing.T) {
	root, _, _ := tree(t)
	r := New(root)
	for _, p := range []string{filepath.Join(root, "missing"), filepath.Join(root, "dangling_in"), filepath.Join(root, "plain", "adapter_config.json", "x")} {
		if _, err := r.Open(p); !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrOutside) {
			t.Errorf("Open(%s) = %v, want fs.ErrNotExist", p, err)
		}
	}
	if _, err := r.Open(filepath.Join(root, "loop_a")); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a link loop: %v", err)
	}
}

// Only regular files are opened: a FIFO is refused at once (opening one would wait for a
// writer for ever), and so are devices and folders, with or without roots.
func TestOnlyRegularFiles(t *testing.T) {
	root := t.TempDir()
	fifo := filepath.Join(root, "fifo")
	must(t, syscall.Mkfifo(fifo, 0o644))
	must(t, os.Symlink("fifo", filepath.Join(root, "to_fifo")))
	must(t, os.Mkdir(filepath.Join(root, "dir"), 0o755))
	for _, r := range []*Roots{New(root), nil} {
		for _, p := range []string{fifo, filepath.Join(root, "to_fifo"), filepath.Join(root, "dir")} {
			done := make(chan error, 1)
			go func() { _, err := r.ReadFile(p, MaxConfigBytes); done <- err }()
			select {
			case err := <-done:
				if !errors.Is(err, ErrNotRegular) {
					t.Errorf("roots %v: ReadFile(%s) = %v, want ErrNotRegular", r.Paths(), p, err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("ReadFile(%s) blocked", p)
			}
		}
	}
	if _, err := (*Roots)(nil).ReadFile("/dev/zero", MaxConfigBytes); !errors.Is(err, ErrNotRegular) {
		t.Errorf("/dev/zero: %v, want ErrNotRegular", err)
	}
}

// A config is read through a size limit: a larger file is refused before it is read, and a
// link to /dev/zero inside a root is refused as leaving the roots.
func TestReadFileLimit(t *testing.T) {
	root := t.TempDir()
	big := filepath.Join(root, "big.json")
	write(t, big, strings.Repeat(" ", MaxConfigBytes+1))
	must(t, os.Symlink("/dev/zero", filepath.Join(root, "zero.json")))
	r := New(root)
	if _, err := r.ReadFile(big, MaxConfigBytes); !errors.Is(err, ErrTooLarge) {
		t.Errorf("big: %v, want ErrTooLarge", err)
	}
	if got, err := r.ReadFile(big, MaxConfigBytes+1); err != nil || len(got) != MaxConfigBytes+1 {
		t.Errorf("big within a larger limit: %d bytes, %v", len(got), err)
	}
	if _, err := r.ReadFile(filepath.Join(root, "zero.json"), MaxConfigBytes); !errors.Is(err, ErrOutside) {
		t.Errorf("zero: %v, want ErrOutside", err)
	}
}

// A root that is itself a link (a mounted volume path) or a single file works; the root itself
// lies inside itself.
func TestRootsThemselves(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	must(t, os.Mkdir(real, 0o755))
	write(t, filepath.Join(real, "f"), "x")
	must(t, os.Symlink(real, filepath.Join(base, "mount")))
	single := filepath.Join(base, "single.lorapack")
	write(t, single, "y")
	r := New(filepath.Join(base, "mount"), single, filepath.Join(base, "not_there"))
	for _, p := range []string{filepath.Join(real, "f"), filepath.Join(base, "mount", "f"), single} {
		if _, err := r.ReadFile(p, 10); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if _, err := r.Resolve(filepath.Join(base, "mount")); err != nil {
		t.Errorf("the root itself: %v", err)
	}
	if _, err := r.ReadFile(filepath.Join(base, "single.lorapack.bak"), 10); !errors.Is(err, ErrOutside) {
		t.Errorf("a sibling of a single-file root: %v", err)
	}
}

// A file swapped for a link out of the roots is refused on its next open.
func TestOpenChecksTheFileOpened(t *testing.T) {
	root, _, outside := tree(t)
	r := New(root)
	p := filepath.Join(root, "plain", "adapter_config.json")
	f, err := r.Open(p)
	must(t, err)
	f.Close()
	// Swap the file for a link out of the root: the next open refuses it.
	must(t, os.Remove(p))
	must(t, os.Symlink(filepath.Join(outside, "secret"), p))
	if _, err := r.Open(p); !errors.Is(err, ErrOutside) {
		t.Fatalf("after the swap: %v", err)
	}
	data, _ := r.ReadFile(p, MaxConfigBytes)
	if bytes.Contains(data, []byte("SECRET")) {
		t.Fatal("read the secret")
	}
}

// resolve agrees with filepath.EvalSymlinks on every path that exists.
func FuzzResolve(f *testing.F) {
	for _, s := range []string{"adapter_config.json", "..data/adapter_config.json", "escape_dir/secret", "plain/../..",
		"a/../../b", "loop_a", "dangling_in", ".", "..", "//plain///./adapter_config.json", "escape_relative", "plain/adapter_config.json/x"} {
		f.Add(s)
	}
	root, _, _ := tree(f)
	must(f, os.Symlink("..", filepath.Join(root, "up")))
	must(f, os.Symlink(root, filepath.Join(root, "abs_root")))
	f.Fuzz(func(t *testing.T, rel string) {
		if strings.ContainsRune(rel, 0) {
			return
		}
		p := filepath.Join(root, rel)
		got, exists, err := resolve(p)
		want, werr := filepath.EvalSymlinks(p)
		if exists && err == nil {
			if werr != nil {
				t.Fatalf("resolve(%q) = %q, EvalSymlinks fails: %v", p, got, werr)
			}
			if wabs, _ := filepath.Abs(want); wabs != got {
				t.Fatalf("resolve(%q) = %q, EvalSymlinks %q", p, got, wabs)
			}
		}
		if err == nil && !filepath.IsAbs(got) {
			t.Fatalf("resolve(%q) = %q, not absolute", p, got)
		}
	})
}

// A path outside the roots through a folder the server may not search is still "outside", not a
// permission error: the answer must not tell which folders outside exist.
func TestOutsideThroughUnsearchableFolder(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root searches every folder")
	}
	root, _, outside := tree(t)
	locked := filepath.Join(outside, "locked")
	must(t, os.Mkdir(filepath.Join(locked), 0o755))
	must(t, os.Chmod(locked, 0))
	t.Cleanup(func() { os.Chmod(locked, 0o755) })
	r := New(root)
	for _, p := range []string{filepath.Join(locked, "x", "y"), filepath.Join(outside, "missing")} {
		if _, err := r.Open(p); !errors.Is(err, ErrOutside) || err.Error() != "open "+p+": outside the allowed roots" {
			t.Errorf("Open(%s) = %v, want ErrOutside only", p, err)
		}
	}
}
