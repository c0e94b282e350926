package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/bench/internal/benchenv"
	"github.com/loraplex/loraplex/lorapack"
	"github.com/loraplex/loraplex/model"
)

// hostStage is the disk -> host stage of a lorapack file for a backend that decodes q4/q8 on
// the device (CUDA): adaptercache.LoadCompressedEncoded, the file read and checked, its streams
// left encoded, then adaptercache.Digest of what it loaded (timed apart: the cache hashes every
// load beside its first upload, so the digest is on the path only where it outlasts the copy). It runs here on any backend, so the stage the GPU pays is
// measured on the CPU machine too. Warm page cache; wall and CPU time (user + system, all
// threads) per load and per digest.
type hostStage struct {
	MedianMS    float64 `json:"median_ms"`
	MinMS       float64 `json:"min_ms"`
	CPUMSMedian float64 `json:"cpu_ms_median"`
	DigestMS    float64 `json:"digest_ms_median"`
	DigestCPUMS float64 `json:"digest_cpu_ms_median"`
	Loads       int     `json:"loads"`
}

func measureHostStage(cfg *model.Config, path string, loads int) (hostStage, error) {
	onDevice := func(codec string) bool { return codec == "q4" || codec == "q8" }
	var wall, cpu, dwall, dcpu []float64
	for i := 0; i <= loads; i++ {
		if err := readAll(path); err != nil {
			return hostStage{}, err
		}
		c0 := cpuTime()
		t0 := time.Now()
		ha, closer, err := adaptercache.LoadCompressedEncoded(path, "x", cfg, onDevice)
		w, c := time.Since(t0), cpuTime()-c0
		if err != nil {
			return hostStage{}, err
		}
		c0 = cpuTime()
		t0 = time.Now()
		adaptercache.Digest(ha)
		dw, dc := time.Since(t0), cpuTime()-c0
		closer.Close()
		if i > 0 { // the first load warms the code paths
			wall, cpu = append(wall, ms(w)), append(cpu, ms(c))
			dwall, dcpu = append(dwall, ms(dw)), append(dcpu, ms(dc))
		}
	}
	return hostStage{MedianMS: benchenv.Percentile(wall, 50), MinMS: slices.Min(wall), CPUMSMedian: benchenv.Percentile(cpu, 50),
		DigestMS: benchenv.Percentile(dwall, 50), DigestCPUMS: benchenv.Percentile(dcpu, 50), Loads: loads}, nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// readMode is one way of getting a file's bytes into private memory and checking them (the
// CRC-32C the lorapack loader computes), timed warm and cold.
type readMode struct {
	Mode   string  `json:"mode"`
	WarmMS float64 `json:"warm_ms_median"`
	ColdMS float64 `json:"cold_ms_median"`
}

// readModes compares the ways the host stage could read a lorapack file: through a mapping
// (what the loader does: mmap, copy out, sum), with read(2) after posix_fadvise(SEQUENTIAL)
// (kernel readahead), and with O_DIRECT (no page cache: what a cold load could use to skip
// the cache's copy). Medians of n each, page cache warm (read just before) and cold
// (POSIX_FADV_DONTNEED just before).
func readModes(path string, n int) ([]readMode, error) {
	modes := []struct {
		name string
		read func(string) (uint32, error)
	}{
		{"mmap + copy + CRC-32C", readMapped},
		{"read(2), fadvise SEQUENTIAL, + CRC-32C", readSequential},
		{"O_DIRECT read + CRC-32C", readDirect},
	}
	var out []readMode
	var sum *uint32
	for _, m := range modes {
		var warm, cold []float64
		for i := 0; i < n; i++ {
			for _, c := range []bool{false, true} {
				var err error
				if c {
					err = evict(path)
				} else {
					err = readAll(path)
				}
				if err != nil {
					return nil, err
				}
				t0 := time.Now()
				got, err := m.read(path)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", m.name, err)
				}
				// Every mode must read the same bytes, or its time means nothing.
				if sum == nil {
					sum = &got
				} else if got != *sum {
					return nil, fmt.Errorf("%s read other bytes (CRC-32C %08x, want %08x)", m.name, got, *sum)
				}
				if c {
					cold = append(cold, ms(time.Since(t0)))
				} else {
					warm = append(warm, ms(time.Since(t0)))
				}
			}
		}
		out = append(out, readMode{Mode: m.name, WarmMS: benchenv.Percentile(warm, 50), ColdMS: benchenv.Percentile(cold, 50)})
	}
	return out, nil
}

// openSized opens path for reading and gives its size, as the buffered read modes need.
func openSized(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Size(), nil
}

func readMapped(path string) (uint32, error) {
	f, size, err := openSized(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(m)
	buf := make([]byte, len(m))
	copy(buf, m)
	return lorapack.Checksum(buf), nil
}

func readSequential(path string) (uint32, error) {
	f, size, err := openSized(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL); err != nil {
		return 0, err
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(f, buf); err != nil {
		return 0, err
	}
	return lorapack.Checksum(buf), nil
}

// readDirect reads with O_DIRECT into page-aligned memory (an anonymous mapping), 4 MiB a
// call; the file's tail past the last whole block comes in one last aligned read.
func readDirect(path string) (uint32, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	const block = 4096
	size := int(st.Size)
	buf, err := unix.Mmap(-1, 0, (size+block-1)/block*block, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(buf)
	for off := 0; off < size; {
		n, err := unix.Pread(fd, buf[off:min(off+4<<20, len(buf))], int64(off))
		if err != nil {
			return 0, err
		}
		if n == 0 {
			break
		}
		off += n
	}
	return lorapack.Checksum(buf[:size]), nil
}
