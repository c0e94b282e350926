package lorapack

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/loraplex/loraplex/model/safetensors"
)

// Every stream carries a CRC-32C of its bytes in the manifest (TensorInfo.CRC32C), and the
// manifest a CRC-32C of its own JSON in the metadata (MetaManifestCRC), both checked on every
// load: the codecs reject streams that are not canonical, but most single-byte changes of a
// value (a q4 code, a bf16 value, a group maximum) still decode to other valid numbers, and a
// changed lora_alpha in the manifest's peft_config would rescale the adapter silently. CRC-32C
// runs in hardware (SSE4.2, ARMv8 CRC) at several GB/s, a small part of a load. Files of the
// first format (loraplex.lorapack/v1) have no checksums and are refused with a message saying
// how to rebuild them: a load that cannot tell a damaged adapter from a good one is what the
// checksums are there to prevent, and v1 was never released.

// A lorapack file is a safetensors file: one U8 tensor per LoRA factor, named with its PEFT key
// and holding its encoded stream, and a JSON Manifest in __metadata__. Tensors are stored layer
// by layer (layer 0's first, and within a layer in projection order, A before B), so a reader
// streaming the file can start decoding before the whole file has arrived; safetensors itself
// does not care about the order, so any safetensors tool can still list and extract the file.

// Format is the manifest's format string.
const Format = "loraplex.lorapack/v2"

// FormatPrefix starts every version's format string.
const FormatPrefix = "loraplex.lorapack/"

// Metadata keys: "format" is duplicated outside the manifest so that IsCompressed-style checks
// need not parse the manifest.
const (
	MetaFormat      = "format"
	MetaManifest    = "lorapack"
	MetaManifestCRC = "lorapack_crc32c" // CRC-32C of MetaManifest's value, 8 hex digits
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the CRC-32C a manifest records for a stream.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Manifest describes a lorapack file.
type Manifest struct {
	Format    string `json:"format"`
	BaseModel string `json:"base_model"`
	// TargetModules, UseRSLoRA and Modules restate the adapter config for inspection; PEFTConfig
	// is that config verbatim (JSON-compacted), which is what loaders parse, so nothing peft decides about ranks
	// and scales (rank_pattern, alpha_pattern, ...) can be lost.
	TargetModules json.RawMessage       `json:"target_modules"`
	UseRSLoRA     bool                  `json:"use_rslora"`
	Modules       map[string]ModuleInfo `json:"modules"`
	Tensors       map[string]TensorInfo `json:"tensors"`
	// Global is set when the file was made in exact ComPEFT mode.
	Global     *Global         `json:"global,omitempty"`
	PEFTConfig json.RawMessage `json:"peft_config"`
}

// ModuleInfo is one adapted module's rank, lora_alpha and resulting scale.
type ModuleInfo struct {
	Rank  int     `json:"rank"`
	Alpha float64 `json:"alpha"`
	Scale float32 `json:"scale"`
}

// TensorInfo is one factor's encoding.
type TensorInfo struct {
	Codec string `json:"codec"`
	// Density is the requested fraction kept (1 for dense); Kept the non-zeros actually stored.
	Density float64 `json:"density"`
	Kept    int     `json:"kept"`
	Shape   [2]int  `json:"shape"`
	// DType is the factor's dtype in the PEFT file; loaders decode F32 factors to F32 and the
	// others to BF16.
	DType string `json:"dtype"`
	Bytes int    `json:"bytes"`
	// Group is q8's and q4's group size (absent for the other codecs).
	Group int `json:"group,omitempty"`
	// CRC32C is the stream's checksum (Checksum).
	CRC32C uint32 `json:"crc32c"`
}

// OutDType is the dtype a factor decodes to.
func (t TensorInfo) OutDType() string {
	if t.DType == "F32" {
		return "F32"
	}
	return "BF16"
}

// Stream is one encoded tensor to write.
type Stream struct {
	Name string
	Data []byte
}

// WriteContainer writes the streams in the order given, with the manifest. It sets each
// stream's checksum in m.Tensors.
func WriteContainer(w io.Writer, m *Manifest, streams []Stream) error {
	for _, s := range streams {
		info, ok := m.Tensors[s.Name]
		if !ok {
			return fmt.Errorf("stream %q is not in the manifest", s.Name)
		}
		info.CRC32C = Checksum(s.Data)
		m.Tensors[s.Name] = info
	}
	mj, err := json.Marshal(m)
	if err != nil {
		return err
	}
	meta := map[string]string{MetaFormat: Format, MetaManifest: string(mj), MetaManifestCRC: fmt.Sprintf("%08x", Checksum(mj))}
	entries := make([]safetensors.Tensor, len(streams))
	for i, s := range streams {
		entries[i] = safetensors.Tensor{Name: s.Name, DType: "U8", Shape: []int{len(s.Data)}, Data: s.Data}
	}
	return writeOrdered(w, entries, meta)
}

// writeOrdered writes a safetensors file keeping the tensors in the given order
// (safetensors.Write sorts them by name, which puts layer 10 before layer 2).
func writeOrdered(w io.Writer, tensors []safetensors.Tensor, meta map[string]string) error {
	hdr, err := header(entries(tensors), meta)
	if err != nil {
		return err
	}
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	for _, t := range tensors {
		if _, err := w.Write(t.Data); err != nil {
			return err
		}
	}
	return nil
}

// entry is a tensor's header line: name, dtype, shape and byte size.
type entry struct {
	Name, DType string
	Shape       []int
	Size        int
}

func entries(ts []safetensors.Tensor) []entry {
	out := make([]entry, len(ts))
	for i, t := range ts {
		out[i] = entry{t.Name, t.DType, t.Shape, len(t.Data)}
	}
	return out
}

// header is the length prefix and JSON header of a safetensors file holding the tensors in order,
// padded so the data start 8-byte aligned.
func header(tensors []entry, meta map[string]string) ([]byte, error) {
	var hdr bytes.Buffer
	md, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	hdr.Write(make([]byte, 8))
	hdr.WriteString(`{"__metadata__":`)
	hdr.Write(md)
	var off uint64
	seen := map[string]bool{}
	for _, t := range tensors {
		if seen[t.Name] || t.Name == "__metadata__" {
			return nil, fmt.Errorf("tensor name %q given twice or reserved", t.Name)
		}
		seen[t.Name] = true
		name, _ := json.Marshal(t.Name)
		entry, _ := json.Marshal(struct {
			DType   string    `json:"dtype"`
			Shape   []int     `json:"shape"`
			Offsets [2]uint64 `json:"data_offsets"`
		}{t.DType, t.Shape, [2]uint64{off, off + uint64(t.Size)}})
		hdr.WriteByte(',')
		hdr.Write(name)
		hdr.WriteByte(':')
		hdr.Write(entry)
		off += uint64(t.Size)
	}
	hdr.WriteByte('}')
	for hdr.Len()%8 != 0 {
		hdr.WriteByte(' ')
	}
	b := hdr.Bytes()
	binary.LittleEndian.PutUint64(b, uint64(len(b)-8))
	return b, nil
}

// Container is an open lorapack file.
type Container struct {
	File     *safetensors.File
	Manifest *Manifest
}

// Open maps a lorapack file and checks its manifest against its tensors. Errors are
// *safetensors.FormatError for a broken safetensors layer, wrapped ErrCorrupt for a broken
// manifest, or I/O errors. The streams are checked against their checksums as they are read
// (ReadStream, DecodeFile).
func Open(path string) (*Container, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	return open(f)
}

// FromFile is Open of a file the caller mapped itself (safetensors.OpenFile: one opened
// beneath allowed roots, see internal/confine), which lets the caller start copying the
// streams out (CopyStream) while the manifest is checked. f stays open whatever the result:
// the caller closes it once nothing reads the mapping (Container.Close, after a success).
func FromFile(f *safetensors.File) (*Container, error) {
	var m *Manifest
	err := safetensors.ReadMapped(func() (err error) {
		m, err = checkManifest(f)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &Container{File: f, Manifest: m}, nil
}

func open(f *safetensors.File) (*Container, error) {
	c, err := FromFile(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return c, nil
}

// Close unmaps the file.
func (c *Container) Close() error { return c.File.Close() }

func checkManifest(f *safetensors.File) (*Manifest, error) {
	md := f.Metadata()
	if strings.HasPrefix(md[MetaFormat], FormatPrefix) && md[MetaFormat] != Format {
		return nil, fmt.Errorf("%w: %s is a %s file, which has no checksums and is no longer read; rebuild it with `lorapack compress` from its PEFT folder",
			ErrCorrupt, f.Path(), md[MetaFormat])
	}
	if md[MetaFormat] != Format {
		return nil, fmt.Errorf("%w: %s is not a lorapack file (metadata format %q, want %q)", ErrCorrupt, f.Path(), md[MetaFormat], Format)
	}
	if sum := fmt.Sprintf("%08x", Checksum([]byte(md[MetaManifest]))); md[MetaManifestCRC] != sum {
		return nil, corrupt("the manifest's checksum is %s, the metadata says %q", sum, md[MetaManifestCRC])
	}
	var m Manifest
	if err := readManifest([]byte(md[MetaManifest]), &m); err != nil {
		return nil, corrupt("manifest: %v", err)
	}
	if m.Format != Format {
		return nil, corrupt("manifest format %q", m.Format)
	}
	if len(m.Tensors) != len(f.Names()) {
		return nil, corrupt("manifest lists %d tensors, the file holds %d", len(m.Tensors), len(f.Names()))
	}
	for _, name := range f.Names() {
		t, _ := f.Tensor(name)
		info, ok := m.Tensors[name]
		if !ok {
			return nil, corrupt("tensor %q is not in the manifest", name)
		}
		if t.DType != "U8" {
			return nil, corrupt("tensor %q has dtype %s, want U8", name, t.DType)
		}
		if info.Bytes != len(t.Data) {
			return nil, corrupt("tensor %q holds %d bytes, manifest says %d", name, len(t.Data), info.Bytes)
		}
		h, _, err := ParseHeader(t.Data)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		if h.Rows != info.Shape[0] || h.Cols != info.Shape[1] || h.Codec.String() != info.Codec {
			return nil, corrupt("tensor %q: stream is %v [%d, %d], manifest says %s %v", name, h.Codec, h.Rows, h.Cols, info.Codec, info.Shape)
		}
		if (h.Codec == Q8 || h.Codec == Q4) != (info.Group != 0) || (info.Group != 0 && info.Group != int(h.Param)) {
			return nil, corrupt("tensor %q: stream has group size %d, manifest says %d", name, h.Param, info.Group)
		}
	}
	return &m, nil
}

// ReadStream copies tensor name's stream out of the file into dst, which must be exactly its
// size, and checks it against the manifest's checksum (CopyStream, then CheckSum). The copy is
// private: the file may change afterwards, and a file truncated during the copy is an error
// (safetensors.ErrFileChanged), not a crash.
func (c *Container) ReadStream(name string, dst []byte) error {
	t, ok := c.File.Tensor(name)
	if !ok || len(dst) != len(t.Data) {
		return fmt.Errorf("lorapack: ReadStream of %q into %d bytes", name, len(dst))
	}
	sum, err := CopyStream(dst, t.Data)
	if err != nil {
		return err
	}
	return c.CheckSum(name, sum)
}

// CopyStream copies a stream out of a file's mapping (a tensor's Data) into dst, of its
// size, and returns the CRC-32C of the copy; ReadStream without the manifest, for a caller
// that copies streams before the manifest is checked (FromFile) and checks their sums after
// (CheckSum). A file truncated during the copy is safetensors.ErrFileChanged, not a crash.
//
// The copy and the checksum are one pass: each chunk is summed from dst right after it is
// copied, while it is still in the core's cache, instead of a second walk over the stream.
func CopyStream(dst, src []byte) (uint32, error) {
	if len(dst) != len(src) {
		return 0, fmt.Errorf("lorapack: CopyStream of %d bytes into %d", len(src), len(dst))
	}
	var sum uint32
	err := safetensors.ReadMapped(func() error {
		sum = copySum(dst, src)
		return nil
	})
	return sum, err
}

// CheckSum refuses a copy of tensor name's stream whose CRC-32C (sum) is not the manifest's.
func (c *Container) CheckSum(name string, sum uint32) error {
	info, ok := c.Manifest.Tensors[name]
	if !ok {
		return fmt.Errorf("lorapack: CheckSum of %q, which the file does not hold", name)
	}
	if sum != info.CRC32C {
		return corrupt("the stream's checksum is %08x, the manifest says %08x", sum, info.CRC32C)
	}
	return nil
}

// copySumChunk is how much copySum copies before summing it: well inside a core's L2 cache.
const copySumChunk = 64 << 10

// copySum copies src into dst (of the same length) and returns the CRC-32C of the copy.
func copySum(dst, src []byte) uint32 {
	var sum uint32
	for off := 0; off < len(dst); off += copySumChunk {
		end := min(off+copySumChunk, len(dst))
		copy(dst[off:end], src[off:end])
		sum = crc32.Update(sum, castagnoli, dst[off:end])
	}
	return sum
}

// DecodeFile decodes every tensor into one in-memory safetensors file (F32 or BF16 tensors,
// metadata {"format": "pt"} as peft writes), the bytes decompress writes out. Decoding runs on
// all CPUs, one tensor at a time per worker, straight into the output. maxElems bounds the
// total element count, which is the only allocation the file's contents size.
func (c *Container) DecodeFile(maxElems int) ([]byte, error) {
	tensors, sizes, size, err := c.layout(maxElems)
	if err != nil {
		return nil, err
	}
	ents := make([]entry, len(tensors))
	for i, t := range tensors {
		ents[i] = entry{t.Name, t.DType, t.Shape, sizes[i]}
	}
	hdr, err := header(ents, decodedMetadata())
	if err != nil {
		return nil, err
	}
	buf := make([]byte, len(hdr)+size)
	copy(buf, hdr)
	place(tensors, sizes, buf[len(hdr):])
	if err := c.decodeAll(tensors, nil); err != nil {
		return nil, err
	}
	return buf, nil
}

// decodedMetadata is the metadata of a decoded adapter: peft's.
func decodedMetadata() map[string]string { return map[string]string{"format": "pt"} }

// DecodeTensors is DecodeFile for a loader: the same tensors, laid out the same way, given as
// a safetensors.File that safetensors.FromTensors checks as Parse checks a header (over the
// manifest's values), instead of as bytes whose header is written only to be parsed back.
// path names the File in errors. Tensors skip accepts get their place (zeros: alloc's fresh
// memory) so the adapter validates the same, but their streams are not decoded (nor checked
// beyond Open's header checks: the caller reads them with ReadStream or CopyStream), for a backend that
// decodes them itself. alloc, if not nil, makes the buffer (it must return n zero bytes); a
// buffer of untouched zero pages makes the skipped tensors cost no memory writes. The tensors
// are checked before any stream is decoded.
func (c *Container) DecodeTensors(path string, maxElems int, skip func(name string, info TensorInfo) bool, alloc func(n int) ([]byte, error)) (*safetensors.File, error) {
	tensors, sizes, size, err := c.layout(maxElems)
	if err != nil {
		return nil, err
	}
	var buf []byte
	if alloc == nil {
		buf = make([]byte, size)
	} else if buf, err = alloc(size); err != nil {
		return nil, err
	}
	place(tensors, sizes, buf)
	f, err := safetensors.FromTensors(path, tensors, decodedMetadata())
	if err != nil {
		return nil, err
	}
	if err := c.decodeAll(tensors, skip); err != nil {
		return nil, err
	}
	return f, nil
}

// layout is the decoded adapter's tensors in file order, F32 first (which keeps every tensor
// aligned to its element size in a buffer that starts 8-byte aligned), each with its dtype and
// shape, their byte sizes and the total. maxElems bounds the total element count before
// anything is allocated.
func (c *Container) layout(maxElems int) ([]safetensors.Tensor, []int, int, error) {
	names := slices.Clone(c.File.Names())
	slices.SortStableFunc(names, func(a, b string) int {
		return strings.Compare(c.Manifest.Tensors[b].OutDType(), c.Manifest.Tensors[a].OutDType())
	})
	tensors := make([]safetensors.Tensor, len(names))
	sizes := make([]int, len(names))
	total, size := 0, 0
	for i, name := range names {
		info := c.Manifest.Tensors[name]
		n := info.Shape[0] * info.Shape[1]
		if total += n; total > maxElems {
			return nil, nil, 0, corrupt("more than %d values in all", maxElems)
		}
		es := 2
		if info.OutDType() == "F32" {
			es = 4
		}
		tensors[i] = safetensors.Tensor{Name: name, DType: info.OutDType(), Shape: info.Shape[:]}
		sizes[i] = n * es
		size += n * es
	}
	return tensors, sizes, size, nil
}

// place gives each tensor its region of buf, back to back in order.
func place(tensors []safetensors.Tensor, sizes []int, buf []byte) {
	off := 0
	for i, n := range sizes {
		tensors[i].Data = buf[off : off+n : off+n]
		off += n
	}
}

// decodeAll decodes every tensor's stream but those skip accepts into its Data, checking each
// against its checksum, on all CPUs. The error is the first in the tensors' order.
func (c *Container) decodeAll(tensors []safetensors.Tensor, skip func(name string, info TensorInfo) bool) error {
	errs := make([]error, len(tensors))
	var wg sync.WaitGroup
	work := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			var stream []byte // this worker's private copy of the stream being decoded
			for i := range work {
				info := c.Manifest.Tensors[tensors[i].Name]
				if skip != nil && skip(tensors[i].Name, info) {
					continue
				}
				stream = slices.Grow(stream[:0], info.Bytes)[:info.Bytes]
				if errs[i] = c.ReadStream(tensors[i].Name, stream); errs[i] == nil {
					errs[i] = decodeInto(stream, tensors[i])
				}
			}
		})
	}
	for i := range tensors {
		work <- i
	}
	close(work)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("tensor %q: %w", tensors[i].Name, err)
		}
	}
	return nil
}
