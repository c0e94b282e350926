// Command coldload measures one adapter from disk to ready on the device, the way a request
// that names it pays: a fresh adaptercache.Cache per trial, Register, then the time Acquire
// takes until the model.Adapter is resident (disk -> host: LoadPEFT or LoadCompressed;
// host -> device: model.UploadAdapter, with the content digest, adaptercache.Digest, computed
// beside it on the adapter's first upload and shown apart), split into those stages with the
// cache's own counters.
//
// It writes a random rank-16 PEFT adapter on all seven projections of every layer (bf16; 84 MB
// for Llama-3-8B), compresses it with lorapack's default settings (CompressPEFT,
// DefaultCompressOptions), and times both forms with the page cache warm (the files read once
// before) and cold (posix_fadvise(POSIX_FADV_DONTNEED) before each trial; mincore and a timed
// raw read say whether the eviction worked). It also times the host-to-device copy of 84 MB,
// the roofline of the device stage: one backend Upload of the same bytes, and on CUDA one raw
// cudaMemcpy from pinned and from pageable memory.
//
// With the lorapack form it also times the host stage a device-decoding backend (CUDA) pays,
// adaptercache.LoadCompressedEncoded, on whatever backend runs (host.go), and three ways of
// reading the file into private memory with its checksum: through a mapping (the loader's way),
// read(2) with kernel readahead, and O_DIRECT, warm and cold. -json writes the medians for
// bench/gpu/run.sh's results file.
//
//	go run ./bench/coldload -shape small                       # CPU, small model
//	go run ./bench/coldload -shape 8b -forms lorapack          # the host stage on the CPU machine
//	make kernels && go run -tags cuda ./bench/coldload -device cuda -shape 8b -json coldload.json
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/bench/internal/benchenv"
	"github.com/loraplex/loraplex/model"
)

func main() {
	device := flag.String("device", "cpu", "cpu or cuda (build with -tags cuda)")
	shape := flag.String("shape", "8b", "8b (Llama-3-8B) or small")
	rank := flag.Int("rank", 16, "adapter rank")
	targets := flag.String("targets", "all", "target modules, comma-separated or all")
	trials := flag.Int("trials", 10, "timed trials per form and page-cache state")
	dir := flag.String("dir", "", "where to write the adapter (default a temp dir; use a real disk, not tmpfs, for the cold numbers)")
	threads := flag.Int("threads", 0, "CPU backend threads (0 = GOMAXPROCS)")
	goalMS := flag.Float64("goal-ms", 10, "goal for the compressed adapter, ms")
	jsonOut := flag.String("json", "", "also write the medians here as JSON (bench/gpu/run.sh's results file reads it)")
	forms := flag.String("forms", "peft,lorapack", "forms to time: peft, lorapack or both")
	hostLoads := flag.Int("host-loads", 20, "with lorapack: loads timed for the host stage of a device-decoding backend (0: skip it and the read modes)")
	flag.Parse()
	if err := run(*device, *shape, *rank, *targets, *trials, *dir, *threads, *goalMS, *jsonOut, *forms, *hostLoads); err != nil {
		fmt.Fprintln(os.Stderr, "coldload:", err)
		os.Exit(1)
	}
}

type trial struct {
	total, load, upload time.Duration
	digest              time.Duration // adaptercache.Digest's own time, beside the upload and within it
	free                time.Duration // Release + Close: the device copy freed
}

// summary is what -json writes.
type summary struct {
	Device     string       `json:"device"`
	Shape      string       `json:"shape"`
	Rank       int          `json:"rank"`
	Codec      string       `json:"codec"`
	FileBytes  int64        `json:"lorapack_bytes"`
	GoalMS     float64      `json:"goal_ms"`
	RooflineMS float64      `json:"roofline_ms"`
	Trials     int          `json:"trials"`
	Rows       []summaryRow `json:"rows"`
	HostStage  *hostStage   `json:"host_stage_device_decode,omitempty"`
	ReadModes  []readMode   `json:"read_modes,omitempty"`
}

type summaryRow struct {
	Form     string  `json:"form"`
	Cache    string  `json:"cache"`
	TotalMS  float64 `json:"total_ms_median"`
	TotalP90 float64 `json:"total_ms_p90"`
	LoadMS   float64 `json:"disk_to_host_ms_median"`
	DigestMS float64 `json:"digest_ms_median"` // beside the upload, within UploadMS (see DigestBesideUpload)
	UploadMS float64 `json:"host_to_device_ms_median"`
	// DigestBesideUpload: the cache hashes a load beside its first upload, so DigestMS is
	// within UploadMS, not LoadMS (results written before this field: within LoadMS).
	DigestBesideUpload bool `json:"digest_beside_upload"`
}

func run(device, shape string, rank int, targetList string, trials int, dir string, threads int, goalMS float64, jsonOut, forms string, hostLoads int) error {
	cfg, err := benchenv.Config(shape)
	if err != nil {
		return err
	}
	tg, err := benchenv.ParseTargets(targetList)
	if err != nil {
		return err
	}
	be, closeBE, err := benchenv.NewBackend(device, threads)
	if err != nil {
		return err
	}
	defer closeBE()
	if dir == "" {
		if dir, err = os.MkdirTemp("", "coldload-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	spec := benchenv.AdapterSpec{Rank: rank, Targets: tg}
	peft := filepath.Join(dir, "peft")
	packed := filepath.Join(dir, "adapter.lorapack")
	t0 := time.Now()
	if err := spec.WritePEFT(peft, cfg, benchenv.PEFTFactors(1)); err != nil {
		return err
	}
	tWrite := time.Since(t0)
	t0 = time.Now()
	f, err := os.Create(packed)
	if err != nil {
		return err
	}
	if _, err := adaptercache.CompressPEFT(peft, f, adaptercache.DefaultCompressOptions()); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	tCompress := time.Since(t0)
	peftFiles := []string{filepath.Join(peft, adaptercache.PEFTConfigFile), filepath.Join(peft, adaptercache.PEFTWeightsFile)}
	for _, p := range append(peftFiles, packed) {
		if err := syncFile(p); err != nil { // dirty pages cannot be dropped: write them back first
			return err
		}
	}
	peftBytes, _ := fileSize(peftFiles[1])
	packBytes, _ := fileSize(packed)
	fs := "unknown"
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil {
		fs = fmt.Sprintf("0x%x", st.Type)
		if st.Type == unix.TMPFS_MAGIC {
			fs += " (tmpfs: cold == warm, eviction cannot work)"
		}
	}

	fmt.Printf("# Cold load of one adapter, disk -> ready on the device — %s\n\n", time.Now().UTC().Format("2006-01-02 15:04Z"))
	fmt.Printf("Backend `%s`, shape %s (%d layers, hidden %d), adapter rank %d on %s, bf16: %s bytes of tensors (%s safetensors file); "+
		"lorapack default (%s): %s bytes (%.1fx smaller). Written in %.1fs, compressed in %.1fs, into %s (filesystem %s). "+
		"%d timed trials per row after one untimed one; a fresh adaptercache.Cache (1 device slot) per trial; time = Register+Acquire returning the lease.\n\n",
		be.Name(), shape, cfg.NumLayers, cfg.HiddenSize, rank, targetList, comma(spec.Bytes(cfg)), comma(peftBytes), defaultCodec(), comma(packBytes),
		float64(peftBytes)/float64(packBytes), tWrite.Seconds(), tCompress.Seconds(), dir, fs, trials)

	// The roofline of the device stage: the same bytes in one upload.
	adBytes := int(spec.Bytes(cfg))
	fmt.Printf("## Host -> device copy of %s bytes (roofline of the device stage)\n\n", comma(int64(adBytes)))
	up, err := timeUpload(be, adBytes)
	if err != nil {
		return err
	}
	fmt.Printf("- backend Upload of one %s-byte bf16 tensor (Go memory; the path adapters take): median %.2f ms = %.1f GB/s\n", comma(int64(adBytes)), ms(up), float64(adBytes)/up.Seconds()/1e9)
	var rooflineMS float64 = ms(up)
	if device != "cuda" {
		fmt.Printf("- raw cudaMemcpy: not measured (device %s)\n", device)
	} else if h, err := benchenv.MeasureH2D(adBytes, 5); err == nil {
		rooflineMS = float64(adBytes) / h.PinnedBytesPerS * 1e3
		fmt.Printf("- raw cudaMemcpy, pinned source (cudaMallocHost): %.1f GB/s = %.2f ms for the adapter\n", h.PinnedBytesPerS/1e9, rooflineMS)
		fmt.Printf("- raw cudaMemcpy, pageable source (malloc): %.1f GB/s = %.2f ms for the adapter\n", h.PageableBytesPerS/1e9, float64(adBytes)/h.PageableBytesPerS*1e3)
	} else {
		fmt.Printf("- raw cudaMemcpy: not measured (%v)\n", err)
	}
	fmt.Println()

	// Eviction check: time a raw read of each file warm and just after evicting it.
	fmt.Printf("## Page-cache eviction check (raw read of the file, median of 3)\n\n")
	fmt.Printf("| file | bytes | warm read ms | after DONTNEED: resident pages | read ms | evicted? |\n|---|---|---|---|---|---|\n")
	for _, p := range []string{peftFiles[1], packed} {
		warm, cold, resident, err := evictionCheck(p)
		if err != nil {
			return err
		}
		sz, _ := fileSize(p)
		fmt.Printf("| %s | %s | %.2f | %.1f%% | %.2f | %s |\n", filepath.Base(p), comma(sz), ms(warm), 100*resident, ms(cold),
			map[bool]string{true: "yes", false: "**no**"}[resident < 0.01])
	}
	fmt.Println()

	type row struct {
		form, cache string
		path        string
		files       []string
	}
	var rows []row
	for _, f := range strings.Split(forms, ",") {
		switch strings.TrimSpace(f) {
		case "peft":
			rows = append(rows, row{"PEFT folder", "warm", peft, peftFiles}, row{"PEFT folder", "cold", peft, peftFiles})
		case "lorapack":
			rows = append(rows, row{"lorapack", "warm", packed, []string{packed}}, row{"lorapack", "cold", packed, []string{packed}})
		default:
			return fmt.Errorf("-forms: %q is not peft or lorapack", f)
		}
	}
	sum := summary{Device: be.Name(), Shape: shape, Rank: rank, Codec: defaultCodec(), FileBytes: packBytes, GoalMS: goalMS, RooflineMS: rooflineMS, Trials: trials}
	fmt.Printf("## Disk -> ready on the device (ms; median / p90 of %d trials)\n\n", trials)
	fmt.Printf("| form | page cache | total median | total p90 | disk->host median | host->device median | digest beside it | other (cache, goroutines) | first, untimed trial | vs goal %.0f ms (median) | free median (Release+Close) |\n|---|---|---|---|---|---|---|---|---|---|---|\n", goalMS)
	for _, r := range rows {
		var ts []trial
		var first trial
		for i := 0; i <= trials; i++ {
			if r.cache == "cold" {
				for _, p := range r.files {
					if err := evict(p); err != nil {
						return err
					}
				}
			} else {
				for _, p := range r.files {
					if err := readAll(p); err != nil {
						return err
					}
				}
			}
			t, err := acquireOnce(cfg, be, r.path)
			if err != nil {
				return fmt.Errorf("%s %s: %w", r.form, r.cache, err)
			}
			if i == 0 {
				first = t
				continue
			}
			ts = append(ts, t)
		}
		tot, ld, upl, oth := stage(ts, func(t trial) time.Duration { return t.total }), stage(ts, func(t trial) time.Duration { return t.load }),
			stage(ts, func(t trial) time.Duration { return t.upload }), stage(ts, func(t trial) time.Duration { return t.total - t.load - t.upload })
		dig := stage(ts, func(t trial) time.Duration { return t.digest })
		goal := fmt.Sprintf("%.2fx", benchenv.Percentile(tot, 50)/goalMS)
		if r.form == "lorapack" {
			goal = "**" + goal + "** " + map[bool]string{true: "met", false: "not met"}[benchenv.Percentile(tot, 50) < goalMS]
		}
		fmt.Printf("| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %s | %.2f |\n", r.form, r.cache, benchenv.Percentile(tot, 50), benchenv.Percentile(tot, 90),
			benchenv.Percentile(ld, 50), benchenv.Percentile(upl, 50), benchenv.Percentile(dig, 50), benchenv.Percentile(oth, 50), ms(first.total), goal,
			benchenv.Percentile(stage(ts, func(t trial) time.Duration { return t.free }), 50))
		sum.Rows = append(sum.Rows, summaryRow{Form: map[bool]string{true: "lorapack", false: "peft"}[r.form == "lorapack"], Cache: r.cache,
			TotalMS: benchenv.Percentile(tot, 50), TotalP90: benchenv.Percentile(tot, 90), LoadMS: benchenv.Percentile(ld, 50), DigestMS: benchenv.Percentile(dig, 50), UploadMS: benchenv.Percentile(upl, 50), DigestBesideUpload: true})
	}
	if slices.ContainsFunc(rows, func(r row) bool { return r.form == "lorapack" }) && hostLoads > 0 {
		fmt.Printf("\n## Host stage of a device-decoding backend (adaptercache.LoadCompressedEncoded: read, checked, q4/q8 left encoded), warm page cache\n\n")
		h, err := measureHostStage(cfg, packed, hostLoads)
		if err != nil {
			return err
		}
		sum.HostStage = &h
		fmt.Printf("%d loads after one: median %.2f ms, min %.2f ms; CPU time (all threads) median %.2f ms; GOMAXPROCS %d\n", h.Loads, h.MedianMS, h.MinMS, h.CPUMSMedian, runtime.GOMAXPROCS(0))
		fmt.Printf("then adaptercache.Digest of the loaded adapter (the cache hashes every load beside its first upload): median %.2f ms, CPU time median %.2f ms\n", h.DigestMS, h.DigestCPUMS)
		fmt.Printf("\n## Reading the lorapack file into private memory and checking it (median of 5)\n\n| mode | warm ms | cold ms |\n|---|---|---|\n")
		if sum.ReadModes, err = readModes(packed, 5); err != nil {
			return err
		}
		for _, m := range sum.ReadModes {
			fmt.Printf("| %s | %.2f | %.2f |\n", m.Mode, m.WarmMS, m.ColdMS)
		}
	}
	fmt.Printf("\nRoofline of the device stage for these %s bytes: %.2f ms (%s). ", comma(int64(adBytes)), rooflineMS,
		map[bool]string{true: "pinned cudaMemcpy", false: "one backend Upload"}[device == "cuda"])
	fmt.Printf("A PEFT folder's disk->host stage only maps the file; its bytes are read (page faults) during the host->device stage, so with a cold page cache the disk read shows there. A lorapack file is read and decoded into fresh host memory in the disk->host stage.\n")
	if jsonOut == "" {
		return nil
	}
	data, err := json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(jsonOut, append(data, '\n'), 0o644)
}

func stage(ts []trial, f func(trial) time.Duration) []float64 {
	out := make([]float64, len(ts))
	for i, t := range ts {
		out[i] = ms(f(t))
	}
	return out
}

// acquireOnce is one request's cold path through a fresh cache.
func acquireOnce(cfg *model.Config, be benchenv.Backend, path string) (trial, error) {
	c, err := adaptercache.New(adaptercache.Options{Config: cfg, Backend: be, MaxDeviceSlots: 1, UploadCopies: benchenv.Copies(be)})
	if err != nil {
		return trial{}, err
	}
	closed := false
	defer func() {
		if !closed {
			c.Close()
		}
	}()
	start := time.Now()
	if err := c.Register("x", path); err != nil {
		return trial{}, err
	}
	l, err := c.Acquire(context.Background(), "x")
	if err != nil {
		return trial{}, err
	}
	total := time.Since(start)
	s := c.Stats()
	t0 := time.Now()
	l.Release()
	c.Close()
	closed = true
	return trial{total: total, load: secs(s.LoadSeconds), digest: secs(s.DigestSeconds), upload: secs(s.UploadSeconds), free: time.Since(t0)}, nil
}

// timeUpload times backend Uploads of one bf16 tensor of n bytes (median of 5 after one).
func timeUpload(be benchenv.Backend, n int) (time.Duration, error) {
	data := benchenv.RandomBF16(n/2, 0.01, 3)
	cols := 4096
	rows := n / 2 / cols
	h := model.HostTensor{Name: "roofline", DType: model.BF16, Shape: []int{rows, cols}, Data: data[:2*rows*cols]}
	var ts []float64
	for i := 0; i < 6; i++ {
		t0 := time.Now()
		t, err := be.Upload(h, rows, cols)
		if err != nil {
			return 0, err
		}
		if err := benchenv.Sync(be); err != nil {
			return 0, err
		}
		d := time.Since(t0)
		be.Free(t)
		if i > 0 {
			ts = append(ts, d.Seconds())
		}
	}
	return secs(benchenv.Percentile(ts, 50)), nil
}

func evictionCheck(p string) (warm, cold time.Duration, resident float64, err error) {
	var w, c []float64
	for i := 0; i < 3; i++ {
		if err = readAll(p); err != nil {
			return
		}
		t0 := time.Now()
		if err = readAll(p); err != nil {
			return
		}
		w = append(w, time.Since(t0).Seconds())
		if err = evict(p); err != nil {
			return
		}
		if resident, err = residency(p); err != nil {
			return
		}
		t0 = time.Now()
		if err = readAll(p); err != nil {
			return
		}
		c = append(c, time.Since(t0).Seconds())
	}
	return secs(benchenv.Percentile(w, 50)), secs(benchenv.Percentile(c, 50)), resident, nil
}

func syncFile(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// evict drops p's pages from the page cache.
func evict(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Fdatasync(int(f.Fd())); err != nil && err != unix.EINVAL {
		return err
	}
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// residency is the fraction of p's pages in the page cache (mincore of a mapping).
func residency(p string) (float64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return 0, err
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return 0, e
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return float64(n) / float64(len(vec)), nil
}

func readAll(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(io.Discard, f)
	return err
}

func fileSize(p string) (int64, error) {
	st, err := os.Stat(p)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func secs(s float64) time.Duration { return time.Duration(s * 1e9) }

func comma(n int64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// defaultCodec names lorapack's default settings for the report.
func defaultCodec() string {
	o := adaptercache.DefaultCompressOptions()
	switch o.Codec {
	case "q4", "q8", "dense":
		return "codec " + o.Codec
	}
	return fmt.Sprintf("codec %s, density %g", o.Codec, o.Density)
}
