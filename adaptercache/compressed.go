package adaptercache

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/loraplex/loraplex/internal/confine"
	"github.com/loraplex/loraplex/lorapack"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// This file is the lorapack side of the cache: compressing a PEFT folder into one lorapack file
// (package lorapack holds the format), and loading such a file into the same HostAdapter
// LoadPEFT gives for the decoded PEFT folder.

// IsCompressed reports whether path is a lorapack file (a regular file whose safetensors
// metadata names the lorapack format), so callers can accept a file wherever they accept a PEFT
// folder. It reads only the header.
func IsCompressed(path string) bool { return isCompressed(nil, path) }

// isCompressed is IsCompressed of a file opened beneath roots (nil: anywhere).
func isCompressed(roots *confine.Roots, path string) bool {
	f, err := roots.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false
	}
	var n [8]byte
	if _, err := io.ReadFull(f, n[:]); err != nil {
		return false
	}
	size := binary.LittleEndian.Uint64(n[:])
	if size > safetensors.MaxHeaderSize || size > uint64(st.Size()-8) {
		return false
	}
	hdr := make([]byte, size)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return false
	}
	var h struct {
		Meta map[string]json.RawMessage `json:"__metadata__"`
	}
	if json.Unmarshal(hdr, &h) != nil {
		return false
	}
	// Any version: an older one then reaches lorapack.Open, which says how to rebuild it.
	var format string
	return json.Unmarshal(h.Meta[lorapack.MetaFormat], &format) == nil && strings.HasPrefix(format, lorapack.FormatPrefix)
}

// LoadCompressed loads a lorapack file and validates it against the base model. The result is
// what LoadPEFT returns for the folder `lorapack decompress` writes: the factors are decoded
// into fresh host buffers (F32 for adapters stored in F32, BF16 otherwise), laid out as that
// folder's safetensors file would be and checked as safetensors.Parse checks it
// (Container.DecodeTensors), then through LoadPEFT's own checks, so both loaders accept and
// reject the same adapters with the same errors. The io.Closer holds nothing (the file is
// closed before returning) and is returned for symmetry with LoadPEFT.
func LoadCompressed(path, name string, base *model.Config) (*model.HostAdapter, io.Closer, error) {
	return loadCompressed(nil, path, name, base)
}

// loadCompressed is LoadCompressed of a file opened beneath roots (nil: anywhere).
func loadCompressed(roots *confine.Roots, path, name string, base *model.Config) (*model.HostAdapter, io.Closer, error) {
	c, err := openContainer(roots, path)
	if err != nil {
		return nil, nil, compressedErr(name, path, err)
	}
	defer c.Close()
	cfg, err := manifestConfig(c, name, path)
	if err != nil {
		return nil, nil, err
	}
	f, err := c.DecodeTensors(path, maxAdapterElems(base, cfg), nil, nil)
	if err != nil {
		return nil, nil, compressedErr(name, path, err)
	}
	a, err := buildAdapter(f, cfg, name, path, base)
	if err != nil {
		return nil, nil, err
	}
	if err := checkFinite(a); err != nil {
		return nil, nil, err
	}
	return a, f, nil
}

// manifestConfig parses the adapter config a lorapack file carries and holds its rank to what
// lorapack files may hold (checkFileRank), before anything the file sizes is allocated.
func manifestConfig(c *lorapack.Container, name, path string) (*PEFTConfig, error) {
	cfg, err := ParsePEFTConfig(c.Manifest.PEFTConfig)
	if err != nil {
		return nil, &AdapterError{Adapter: name, File: path, Err: fmt.Errorf("peft_config in the manifest: %w", err)}
	}
	if err := checkFileRank(name, path, cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// LoadCompressedEncoded is LoadCompressed for a backend that decodes some codecs on the device:
// q4 and q8 tensors whose codec onDevice accepts are not decoded; their HostTensors keep the
// shape, dtype and place LoadCompressed gives them (Data zeros, so the adapter is validated the
// same way) and carry the codec stream in Encoded: a private copy of the stream, checked against
// its checksum. The tensors are an anonymous mapping of zero pages (never written where left
// encoded, so they cost no memory), released by the returned io.Closer. The closer also gives
// the streams' buffer to the next load (streamBuffers): no Encoded stream may be read after
// Close. The others are decoded as LoadCompressed does.
func LoadCompressedEncoded(path, name string, base *model.Config, onDevice func(codec string) bool) (*model.HostAdapter, io.Closer, error) {
	return loadCompressedEncoded(nil, path, name, base, onDevice)
}

// loadCompressedEncoded is LoadCompressedEncoded of a file opened beneath roots (nil: anywhere).
func loadCompressedEncoded(roots *confine.Roots, path, name string, base *model.Config, onDevice func(codec string) bool) (*model.HostAdapter, io.Closer, error) {
	// The streams' buffer comes from the file's size, which bounds the streams it holds, before
	// the manifest says exactly how much: a buffer a closed load gave back (streamBuffers) or,
	// failing that, one allocated (zeroed by the runtime: 24 MB for a rank-16 8B adapter, ~1.7
	// ms on one core) on another goroutine while this one opens and checks the file.
	var buffer func() []byte
	taken := false // the readers took the buffer: it is theirs to keep or give back
	defer func() {
		if buffer != nil && !taken { // not waited for: a load with nothing left encoded does not wait for an allocation
			go func() { streamBuffers.put(buffer()) }()
		}
	}()
	f, err := openMapped(roots, path, func(size int64) {
		buffer = allocAhead(size, maxAdapterBytes(base))
	})
	if err != nil {
		return nil, nil, compressedErr(name, path, err)
	}
	// The streams left for the device are copied out of the file into private memory and
	// summed there, so what the device decodes is what was verified and the file may change
	// afterwards (see ownTensors). That starts as soon as the safetensors header is parsed, on
	// other goroutines, while this one checks the manifest and lays out, parses and validates
	// the adapter: the two halves of the host stage overlap. The streams are chosen by their
	// own headers' codec, which the manifest check then holds to the manifest's, and their sums
	// are compared with the manifest's once it is checked.
	streams := readEncoded(f, onDevice, maxAdapterBytes(base), func() []byte { taken = true; return buffer() })
	keep := false
	// Every return waits for the readers before the file is unmapped; a failed load gives
	// their buffer back.
	defer func() {
		if read, _ := streams(); !keep && read.buf != nil {
			streamBuffers.put(read.buf)
		}
		f.Close()
	}()
	c, err := lorapack.FromFile(f)
	if err != nil {
		return nil, nil, compressedErr(name, path, err)
	}
	cfg, err := manifestConfig(c, name, path)
	if err != nil {
		return nil, nil, err
	}
	skip := func(_ string, info lorapack.TensorInfo) bool { return leftEncoded(info.Codec, onDevice) }
	var release func() error
	defer func() {
		if !keep && release != nil {
			release()
		}
	}()
	d, err := c.DecodeTensors(path, maxAdapterElems(base, cfg), skip, func(n int) ([]byte, error) {
		b, rel, err := zeroPages(n)
		release = rel
		return b, err
	})
	if err != nil {
		return nil, nil, compressedErr(name, path, err)
	}
	a, err := buildAdapter(d, cfg, name, path, base)
	if err != nil {
		return nil, nil, err
	}
	read, err := streams()
	if err != nil {
		return nil, nil, compressedErr(name, path, err)
	}
	// The manifest check held every stream's codec to the manifest's, so the streams read are
	// those skip leaves encoded; what was read is checked against the manifest's sums, in the
	// file's order.
	var encoded int
	for _, n := range f.Names() {
		if !skip(n, c.Manifest.Tensors[n]) {
			continue
		}
		encoded++
		if _, ok := read.streams[n]; !ok {
			return nil, nil, compressedErr(name, path, fmt.Errorf("tensor %q: %w: its stream was not read", n, lorapack.ErrCorrupt))
		}
		if err := c.CheckSum(n, read.sums[n]); err != nil {
			return nil, nil, compressedErr(name, path, fmt.Errorf("tensor %q: %w", n, err))
		}
	}
	if encoded != len(read.streams) {
		return nil, nil, compressedErr(name, path, fmt.Errorf("%w: %d streams read for %d left encoded", lorapack.ErrCorrupt, len(read.streams), encoded))
	}
	for l := range a.Modules {
		for _, m := range a.Modules[l] {
			if m == nil {
				continue
			}
			for _, t := range []*model.HostTensor{&m.A, &m.B} {
				if st, ok := read.streams[t.Name]; ok {
					info := c.Manifest.Tensors[t.Name]
					t.Encoded = &model.EncodedTensor{Codec: info.Codec, Group: info.Group, Stream: st}
				}
			}
		}
	}
	if err := checkFinite(a); err != nil {
		return nil, nil, err
	}
	keep = true
	// Closing gives the streams' buffer to the next load: nothing may read them afterwards,
	// as nothing may read the tensors' zero pages.
	giveBack := sync.OnceValue(func() error {
		if read.buf != nil {
			streamBuffers.put(read.buf)
		}
		return nil
	})
	return a, closers{d, closeFunc(release), closeFunc(giveBack)}, nil
}

// leftEncoded reports whether a tensor of codec is left for the device to decode.
func leftEncoded(codec string, onDevice func(codec string) bool) bool {
	return (codec == "q4" || codec == "q8") && onDevice(codec)
}

// encodedStreams is what readEncoded read: the streams by name, the CRC-32C of each copy, and
// the buffer holding them (nil if none).
type encodedStreams struct {
	streams map[string][]byte
	sums    map[string]uint32
	buf     []byte
}

// readEncoded starts copying the streams of f that are left for the device (leftEncoded of the
// codec in each stream's own header) out of the mapping into one private buffer (each 8-byte
// aligned), summing each copy: the host stage of an adapter the device decodes. It returns at
// once and the work overlaps the caller's: once buffer gives the memory allocated ahead
// (allocAhead; called only if there is a stream to read; one of the streams' size is
// allocated instead where it gave too little), the streams are copied on all CPUs, each copied
// and summed in one pass by lorapack.CopyStream. The caller compares the sums with the
// manifest's (Container.CheckSum) once it is checked. Streams of more than limit bytes in all
// (more than any adapter of the base model decodes to) are refused before anything is
// allocated for them. The function it returns waits for the copies, or gives the first error in
// f's order; it may be called more than once.
func readEncoded(f *safetensors.File, onDevice func(codec string) bool, limit int, buffer func() []byte) func() (encodedStreams, error) {
	done := make(chan struct{})
	var (
		out      encodedStreams
		firstErr error
	)
	go func() {
		defer close(done)
		var names []string
		var src [][]byte
		size := 0
		// The stream headers are in the mapping: a file truncated under us faults here too.
		firstErr = safetensors.ReadMapped(func() error {
			for _, n := range f.Names() {
				t, _ := f.Tensor(n)
				if h, _, err := lorapack.ParseHeader(t.Data); err == nil && leftEncoded(h.Codec.String(), onDevice) {
					names, src = append(names, n), append(src, t.Data)
					size += align8(len(t.Data))
				}
			}
			return nil
		})
		if firstErr != nil || size == 0 { // a file with no stream left encoded does not wait for the allocation
			return
		}
		if size > limit {
			firstErr = fmt.Errorf("%w: %d bytes of encoded streams, more than an adapter of the base model decodes to (%d)", lorapack.ErrCorrupt, size, limit)
			return
		}
		if out.buf = buffer(); len(out.buf) < size {
			streamBuffers.put(out.buf)
			out.buf = newStreamBuffer(size)
		}
		buf := out.buf
		dst := make([][]byte, len(names))
		for i := range names {
			b := len(src[i])
			dst[i], buf = buf[:b:b], buf[align8(b):]
		}
		errs := make([]error, len(names))
		sums := make([]uint32, len(names))
		var next atomic.Int64
		var wg sync.WaitGroup
		for range min(runtime.GOMAXPROCS(0), len(names)) {
			wg.Go(func() { // CopyStream guards its own goroutine against a file truncated under it
				for i := int(next.Add(1) - 1); i < len(names); i = int(next.Add(1) - 1) {
					sums[i], errs[i] = lorapack.CopyStream(dst[i], src[i])
				}
			})
		}
		wg.Wait()
		out.streams, out.sums = make(map[string][]byte, len(names)), make(map[string]uint32, len(names))
		for i, n := range names {
			if errs[i] != nil {
				firstErr = fmt.Errorf("tensor %q: %w", n, errs[i])
				return
			}
			out.streams[n], out.sums[n] = dst[i], sums[i]
		}
	}()
	return func() (encodedStreams, error) {
		<-done
		return out, firstErr
	}
}

// allocAhead gives the buffer for the streams of a lorapack file of size bytes: one the pool
// holds (streamBuffers), or one allocated on another goroutine; it returns its wait. The file
// holds the streams and a header of more than 7 bytes per tensor, so the streams, each padded
// to 8 bytes, fit in size bytes. A file larger than limit (what a valid adapter of the base
// model may decode to) gets nothing ahead (nil): a file that may turn out not to be an adapter
// at all is not allowed to make us allocate more than an adapter can use before it is
// checked; readEncoded allocates for its streams if they come within limit, and refuses them
// otherwise.
func allocAhead(size int64, limit int) func() []byte {
	if size <= 0 || size > int64(limit) {
		return func() []byte { return nil }
	}
	if b := streamBuffers.get(int(size)); b != nil {
		return func() []byte { return b }
	}
	ch := make(chan []byte, 1)
	go func() { ch <- newStreamBuffer(int(size)) }()
	return sync.OnceValue(func() []byte { return <-ch })
}

// newStreamBuffer allocates n bytes for streams with 1/64 more capacity: files of adapters of one
// shape differ by a few bytes (the manifest's checksums are decimal numbers), and the pool
// serves a load only a buffer at least its file's size, so without the headroom a slightly
// larger file would miss every buffer its siblings gave back.
func newStreamBuffer(n int) []byte { return make([]byte, n, n+n/64) }

// closeFunc is a func as an io.Closer.
type closeFunc func() error

func (f closeFunc) Close() error { return f() }

// closers closes each in turn and returns the first error.
type closers []io.Closer

func (cs closers) Close() error {
	var first error
	for _, c := range cs {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// maxAdapterElems bounds what a file may make us allocate before its tensors are validated: the
// size of an adapter on every projection of every layer at the largest rank its config allows.
// Every adapter that passes validation fits; a hostile manifest claiming more is refused before
// the allocation. The loaders first hold the config's rank to DefaultMaxRank (checkFileRank).
func maxAdapterElems(base *model.Config, cfg *PEFTConfig) int {
	return adapterElems(base, maxRank(cfg))
}

// adapterElems is the size of an adapter on every projection of every layer at rank r.
func adapterElems(base *model.Config, r int) int {
	n := 0
	for p := model.Proj(0); p < model.NumProj; p++ {
		out, in := base.ProjShape(p)
		n += out + in
	}
	return n * base.NumLayers * r
}

// maxAdapterBytes is the most a lorapack file's adapter may decode to for the base model: BF16
// at the largest rank lorapack files may hold (checkFileRank).
func maxAdapterBytes(base *model.Config) int { return 2 * adapterElems(base, DefaultMaxRank) }

// checkFileRank refuses a lorapack file whose config allows a rank above DefaultMaxRank. The
// rank is the one size the file chooses that bounds what its decoding allocates (a 20-byte
// sparse stream can claim any shape), so it is held to the kernels' limit before anything is
// allocated; PEFT folders of a higher rank still load where the server allows it
// (--max-lora-rank on the CPU backend), their size being the file's own.
func checkFileRank(name, path string, cfg *PEFTConfig) error {
	if r := maxRank(cfg); r > DefaultMaxRank {
		return &AdapterError{Adapter: name, File: path, Err: fmt.Errorf(
			"%w: rank %d: lorapack files hold ranks up to %d (the kernels' limit)", model.ErrUnsupported, r, DefaultMaxRank)}
	}
	return nil
}

// maxRank is the largest rank r and rank_pattern allow.
func maxRank(cfg *PEFTConfig) int {
	r := cfg.R
	for _, p := range cfg.rankPat {
		r = max(r, p.value)
	}
	return r
}

// openContainer opens a lorapack file beneath roots (nil: anywhere).
func openContainer(roots *confine.Roots, path string) (*lorapack.Container, error) {
	f, err := openMapped(roots, path, nil)
	if err != nil {
		return nil, err
	}
	c, err := lorapack.FromFile(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return c, nil
}

// openMapped maps a file beneath roots (nil: anywhere) and parses its safetensors header.
// sized, if not nil, is told the file's size before the file is read.
func openMapped(roots *confine.Roots, path string, sized func(int64)) (*safetensors.File, error) {
	fd, err := roots.Open(path)
	if err != nil {
		return nil, err
	}
	defer fd.Close() // the mapping does not need the descriptor
	if sized != nil {
		st, err := fd.Stat()
		if err != nil {
			return nil, err
		}
		sized(st.Size())
	}
	return safetensors.OpenFile(path, fd)
}

// decodeCompressed opens, checks and decodes a lorapack file into safetensors bytes, and returns
// the adapter config it carries, raw.
func decodeCompressed(path, name string, limit func(*PEFTConfig, *lorapack.Manifest) int) ([]byte, []byte, error) {
	c, err := openContainer(nil, path)
	if err != nil {
		return nil, nil, compressedErr(name, path, err)
	}
	defer c.Close()
	raw := c.Manifest.PEFTConfig
	cfg, err := ParsePEFTConfig(raw)
	if err != nil {
		return nil, nil, &AdapterError{Adapter: name, File: path, Err: fmt.Errorf("peft_config in the manifest: %w", err)}
	}
	buf, err := c.DecodeFile(limit(cfg, c.Manifest))
	if err != nil {
		return nil, nil, compressedErr(name, path, err)
	}
	return buf, raw, nil
}

// compressedErr classifies an error the way LoadPEFT does: a broken file is an *AdapterError,
// anything else (I/O) is wrapped with the adapter's name.
func compressedErr(name, path string, err error) error {
	var fe *safetensors.FormatError
	if errors.As(err, &fe) {
		return &AdapterError{Adapter: name, File: path, Tensor: fe.Tensor, Err: err}
	}
	if errors.Is(err, lorapack.ErrCorrupt) {
		return &AdapterError{Adapter: name, File: path, Err: err}
	}
	return fmt.Errorf("adapter %q: %w", name, err)
}

// DecompressFile writes a lorapack file back out as a PEFT folder (adapter_config.json, the
// original config verbatim, and adapter_model.safetensors with the decoded factors).
func DecompressFile(path, outDir string) error {
	// Without a base model, bound by the config's rank: every factor has one side of at most that
	// rank, and the other side at most 2^20 (over 50x Llama-3-70B's widest projection); never
	// more than 2^31 values (8 GiB as F32) in all.
	buf, cfg, err := decodeCompressed(path, filepath.Base(path), func(cfg *PEFTConfig, m *lorapack.Manifest) int {
		return min(1<<31, len(m.Tensors)*maxRank(cfg)<<20)
	})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(outDir, PEFTConfigFile), cfg, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(outDir, PEFTWeightsFile), buf, 0o644)
}

// CompressOptions choose how CompressPEFT encodes the factors.
type CompressOptions struct {
	// Codec is "dense", "ternary", "bitmap", "rice" or "auto" (the smallest sparse stream per
	// tensor): these keep a sign per kept value and one magnitude per tensor. "q8" and "q4" are
	// dense group-wise int8 / int4 quantization (8.5 / 4.5 bits a value at group size 32);
	// "rice-q8" is rice plus an 8-bit magnitude per kept value. On the trained demo adapters the
	// sign-only codecs cost +28-74% perplexity even at density 50%; see lorapack/doc.go.
	Codec string
	// Density is the fraction of values kept (ignored by dense, q8 and q4).
	Density float64
	// Group is q8's and q4's group size (0: lorapack.DefaultGroup, 32).
	Group int
	// DenseA stores every lora_A factor dense (bf16) and compresses only the B factors. ComPEFT
	// compresses task vectors (trained minus initial values). B starts at zero, so B is its own
	// task vector; A starts as a random projection (kaiming-uniform) that training barely moves,
	// so sparsifying A throws away the projection itself. On the trained demo adapters it cuts
	// the perplexity cost at density 10% from +2,650-5,000% to +550-1,600% (still large: the
	// sparse codecs keep signs, not magnitudes; bench/results/demo-quality.md).
	DenseA bool
	// Global selects exact ComPEFT: threshold and scale alpha_c*sigma over the whole adapter.
	Global bool
	AlphaC float64
	// Progress, if set, is called after each tensor.
	Progress func(done, total int)
}

// DefaultCompressOptions are q4: group-wise int4 with a bf16 maximum per 32 values, 4.5 bits a
// value, 3.6x smaller than bf16. The sparse sign-and-scale settings are far smaller (10% rice:
// ~26x) but on trained adapters they cost +2,650-5,000% held-out perplexity where q4 costs about
// 1% (bench/results/demo-quality.md), so the default keeps magnitudes. Density stays 0.1 so that
// choosing a sparse codec alone (--codec auto) keeps 10%.
func DefaultCompressOptions() CompressOptions {
	return CompressOptions{Codec: "q4", Density: 0.1, AlphaC: 1}
}

// factor is one PEFT tensor read for compression.
type factor struct {
	name  string
	key   loraKey
	dtype string
	shape [2]int
	vals  []float32
}

// CompressPEFT encodes the PEFT adapter in dir as a lorapack file written to w.
func CompressPEFT(dir string, w io.Writer, opt CompressOptions) (*lorapack.Manifest, error) {
	name := filepath.Base(dir)
	raw, err := os.ReadFile(filepath.Join(dir, PEFTConfigFile))
	if err != nil {
		return nil, err
	}
	cfg, err := ParsePEFTConfig(raw)
	if err != nil {
		return nil, &AdapterError{Adapter: name, File: filepath.Join(dir, PEFTConfigFile), Err: err}
	}
	factors, err := readFactors(filepath.Join(dir, PEFTWeightsFile), name)
	if err != nil {
		return nil, err
	}
	var rawCfg struct {
		Targets json.RawMessage `json:"target_modules"`
	}
	_ = json.Unmarshal(raw, &rawCfg) // ParsePEFTConfig accepted it
	m := &lorapack.Manifest{
		Format: lorapack.Format, BaseModel: cfg.BaseModel, TargetModules: rawCfg.Targets, UseRSLoRA: cfg.UseRSLoRA,
		Modules: map[string]lorapack.ModuleInfo{}, Tensors: map[string]lorapack.TensorInfo{}, PEFTConfig: raw,
	}
	for _, f := range factors {
		r, a := cfg.RankAlpha(f.key.module)
		m.Modules[f.key.module] = lorapack.ModuleInfo{Rank: r, Alpha: a, Scale: cfg.Scale(f.key.module)}
	}
	enc, err := newEncoder(opt, factors)
	if err != nil {
		return nil, err
	}
	m.Global = enc.global
	streams := make([]lorapack.Stream, len(factors))
	for i, f := range factors {
		s, info, err := enc.encode(f)
		if err != nil {
			return nil, &AdapterError{Adapter: name, File: filepath.Join(dir, PEFTWeightsFile), Tensor: f.name, Err: err}
		}
		streams[i] = lorapack.Stream{Name: f.name, Data: s}
		m.Tensors[f.name] = info
		if opt.Progress != nil {
			opt.Progress(i+1, len(factors))
		}
	}
	return m, lorapack.WriteContainer(w, m, streams)
}

// readFactors reads every factor as float32, layer-major (then projection, A before B): the
// order the container stores them in.
func readFactors(path, name string) ([]factor, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, compressedErr(name, path, err)
	}
	defer f.Close()
	var out []factor
	for _, n := range f.Names() {
		k, err := parseKey(n)
		if err != nil {
			return nil, &AdapterError{Adapter: name, File: path, Tensor: n, Err: err}
		}
		t, _ := f.Tensor(n)
		ht, err := hostTensor(t)
		if err == nil && len(t.Shape) != 2 {
			err = fmt.Errorf("shape %v: want a matrix", t.Shape)
		}
		if err != nil {
			return nil, &AdapterError{Adapter: name, File: path, Tensor: n, Err: err}
		}
		vals := make([]float32, t.Shape[0]*t.Shape[1])
		for i := range vals {
			vals[i] = ht.At(i)
		}
		out = append(out, factor{name: n, key: k, dtype: t.DType, shape: [2]int{t.Shape[0], t.Shape[1]}, vals: vals})
	}
	if len(out) == 0 {
		return nil, &AdapterError{Adapter: name, File: path, Err: errNoTensors}
	}
	slices.SortFunc(out, func(a, b factor) int {
		return cmp.Or(cmp.Compare(a.key.layer, b.key.layer), cmp.Compare(a.key.proj, b.key.proj),
			cmp.Compare(a.key.module, b.key.module), compareBool(a.key.isB, b.key.isB), cmp.Compare(a.name, b.name))
	})
	return out, nil
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// encoder applies CompressOptions to one factor at a time.
type encoder struct {
	opt    CompressOptions
	codec  lorapack.Codec // 0: auto
	group  int            // q8, q4
	global *lorapack.Global
}

func newEncoder(opt CompressOptions, factors []factor) (*encoder, error) {
	e := &encoder{opt: opt}
	if opt.Codec != "auto" {
		c, ok := lorapack.ParseCodec(opt.Codec)
		if !ok {
			return nil, fmt.Errorf("codec %q: want dense, ternary, bitmap, rice, auto, q8, q4 or rice-q8", opt.Codec)
		}
		e.codec = c
	}
	switch e.codec {
	case lorapack.Dense, lorapack.Q8, lorapack.Q4:
		if opt.Global {
			return nil, fmt.Errorf("--global sparsifies; it cannot be combined with the %v codec", e.codec)
		}
		if e.codec != lorapack.Dense {
			e.group = cmp.Or(opt.Group, lorapack.DefaultGroup)
			if e.group < 16 || e.group > lorapack.MaxGroup || e.group&(e.group-1) != 0 {
				return nil, fmt.Errorf("group size %d: want 16, 32, 64 or 128", e.group)
			}
		}
		return e, nil
	case lorapack.RiceQ8:
		if opt.Global {
			return nil, errors.New("--global sets every kept value to alpha*sigma; it cannot be combined with rice-q8")
		}
	}
	if !(opt.Density > 0 && opt.Density <= 1) {
		return nil, fmt.Errorf("density %v: want 0 < density <= 1", opt.Density)
	}
	if opt.Global {
		var all [][]float32
		for _, f := range factors {
			if !opt.DenseA || f.key.isB {
				all = append(all, f.vals) // the threshold and scale come from the sparsified factors only
			}
		}
		g, err := lorapack.NewGlobal(all, opt.Density, opt.AlphaC)
		if err != nil {
			return nil, err
		}
		e.global = g
	}
	return e, nil
}

func (e *encoder) encode(f factor) ([]byte, lorapack.TensorInfo, error) {
	info := lorapack.TensorInfo{Density: 1, Shape: f.shape, DType: f.dtype}
	var s []byte
	var err error
	if e.codec == lorapack.Dense || (e.opt.DenseA && !f.key.isB) {
		s, err = lorapack.EncodeDense(f.vals, f.shape[0], f.shape[1])
		info.Kept = len(f.vals)
	} else if e.codec == lorapack.Q8 || e.codec == lorapack.Q4 {
		s, err = lorapack.EncodeQuant(e.codec, f.vals, f.shape[0], f.shape[1], e.group)
		info.Kept, info.Group = len(f.vals), e.group
	} else {
		var sp *lorapack.Sparse
		if e.global != nil {
			sp, err = e.global.Sparsify(f.vals, f.shape[0], f.shape[1])
		} else {
			sp, err = lorapack.PerTensor(f.vals, f.shape[0], f.shape[1], e.opt.Density)
		}
		if err != nil {
			return nil, info, err
		}
		switch c := e.codec; c {
		case lorapack.RiceQ8:
			s, err = lorapack.EncodeRiceQ8(sp, f.vals)
		case 0:
			s, err = lorapack.EncodeSparse(lorapack.Smallest(sp), sp)
		default:
			s, err = lorapack.EncodeSparse(c, sp)
		}
		info.Density, info.Kept = e.opt.Density, len(sp.Idx)
	}
	if err != nil {
		return nil, info, err
	}
	h, _, _ := lorapack.ParseHeader(s)
	info.Codec, info.Bytes = h.Codec.String(), len(s)
	return s, info, nil
}
