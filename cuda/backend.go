//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"fmt"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/loraplex/loraplex/model"
)

// dev is a device allocation; Tensor.Buf holds one.
type dev struct{ ptr uintptr }

// Backend implements model.Backend on one GPU. Ops are queued on one stream; the engine loop
// calls them from one goroutine, Upload/Free may come from others (adapter loads), so the few
// shared pieces are guarded.
type Backend struct {
	device int
	name   string
	stream C.uintptr_t
	blas   C.uintptr_t

	mu  sync.Mutex // guards err and uploads from other goroutines
	err error

	// Step metadata: one pinned host buffer and one device buffer of int32, in sections.
	metaHost              unsafe.Pointer // pinned host memory (cudaMallocHost), not Go memory
	metaDev               uintptr
	metaCap               int
	offTokens, offPos     int
	offSlots, offRowSeq   int
	offSeqPages, offPages int
	offLogit              int
	offTiles, offRows     int // prefill tiles {first row, rows, sequence} and the decode row list
	numTiles, numRows     int
	tileRows              int  // rows per prefill tile of this step: prefillTile, or prefillMMATile (prefillWideTile) on the tensor-core path
	simtPrefill           bool // SetPrefillAttention(false): prefill attention on the CUDA-core kernel for every head dim
	prefillSplit          bool // split-K of the tensor-core prefill tiles (attention.go: LORAPLEX_PREFILL_SPLIT, SetPrefillSplit)
	prefillWide           bool // the tensor-core prefill's 128-row tiles (attention.go: LORAPLEX_PREFILL_WIDE, SetPrefillWide)
	tileKeys              int  // keys the step's longest prefill tile attends to without a window (Prepare)
	rowKeys               int  // keys the step's decode rows attend to, summed, without windows (Prepare; prefetchL2)
	sms                   int  // the device's multiprocessors (the prefill split rule fills them)
	fusedDecode           bool // DecodeFuser's kernels run (fused.go: LORAPLEX_FUSED_DECODE, SetFusedDecode)
	loraGroup             bool // LoRAGrouper's launches run (fused.go: LORAPLEX_LORA_GROUP, SetLoRAGroup)
	loraWide              bool // LoRA and LoRAGroup take the wide kernels (fused.go: LORAPLEX_LORA_WIDE, SetLoRAWide)
	routedWide            bool // RouteLoRA takes the wide shrink (fused.go: LORAPLEX_ROUTED_WIDE, SetRoutedWide)
	routedFused           bool // the wide routed shrink routes its own rows (fused.go: LORAPLEX_ROUTED_FUSED, SetRoutedFused)
	routedGroup           bool // RouteLoRAGroup runs (route.go: LORAPLEX_ROUTED_GROUP, SetRoutedGroup)
	routedFold            bool // RoutedFoldedProducts runs (routefold.go: LORAPLEX_ROUTED_FOLD, SetRoutedFold)
	routedFolds           int  // routed folds taken (RoutedFoldCount)
	routeFoldArgs         routeFoldArgs
	routedGroups          int     // grouped routed calls taken (RoutedGroupCount)
	routedEM              bool    // expert-major routed launches (route.go: LORAPLEX_ROUTED_EXPERT_MAJOR, SetRoutedExpertMajor)
	routedEMMin           int     // choices an expert the step must average to take them (expertMajor)
	routedEMs             int     // expert-major routed calls taken (RoutedExpertMajorCount)
	routedRows            bool    // the routing shrink by rows (route.go: LORAPLEX_ROUTED_ROWS, SetRoutedRows)
	routedRowsMin         int     // (row, member) pairs a call must have to take it (routedRowsTakes)
	routedRowCalls        int     // calls it took (RoutedRowsCount)
	routeFirst            bool    // RouteLoRA routes first, then the wide routed shrink (route.go: LORAPLEX_ROUTE_FIRST, SetRouteFirst)
	routeFirstMin         int     // rows a call must have to take it
	routeFirsts           int     // calls it took (RouteFirstCount)
	emPlan                uintptr // the expert-major launches' plan (device ints, grown by reserve)
	emPlanCap             int
	emOuts, emLogits      [1]model.Tensor      // RouteLoRA's one member for RouteLoRAGroup (no allocation per call)
	emRPs                 [1]*model.RoutedProj // the same
	routeGroupArgs        routeGroupArgs
	normGEMV              bool          // NormFuser's kernels run (fused.go: LORAPLEX_NORM_GEMV, SetNormGEMV)
	swigluBF16            bool          // SiLUMulMatMul runs (fused.go: LORAPLEX_SWIGLU_BF16, SetSwiGLUBF16)
	routedBF16            bool          // routed steps take SiLUMulMatMul too (fused.go: LORAPLEX_ROUTED_BF16, SetRoutedBF16)
	routedBF16s           int           // its calls taken (RoutedBF16Count)
	normBF16              bool          // NormMatMulShared takes cuBLAS-sized steps (fused.go: LORAPLEX_NORM_BF16, SetNormBF16)
	normKeep              bool          // with normBF16, NormFoldedProducts takes adapted ones (lorafold.go: LORAPLEX_NORM_KEEP, SetNormKeep)
	normKept              int           // normKeptProducts calls taken (NormKeptCount)
	loraSwiGLU            bool          // NormGateUpLoRASwiGLU runs (loraswiglu.go: LORAPLEX_LORA_SWIGLU, SetLoRASwiGLU)
	loraSwiGLUs           int           // its calls taken (LoRASwiGLUCount)
	loraRoPE              bool          // NormQKVLoRARoPE runs (loraswiglu.go: LORAPLEX_LORA_ROPE, SetLoRARoPE)
	loraRoPEs             int           // its calls taken (LoRARoPECount)
	normVec               bool          // RMSNorm launches may take the float4 kernel (fused.go: LORAPLEX_NORM_VEC, SetNormVec)
	normStage             bool          // batch-1 norm-fused GEMVs stage their input (fused.go: LORAPLEX_NORM_STAGE, SetNormStage)
	normStagePair         bool          // staged parts launches give a warp two columns (fused.go: LORAPLEX_NORM_STAGE_PAIR, SetNormStagePair)
	loraFold              bool          // batch-1 LoRA shrinks ride the base products' launch (lorafold.go: LORAPLEX_LORA_FOLD, SetLoRAFold)
	folds                 int           // folded calls taken (lorafold.go, FoldCount)
	pdlCapable            bool          // the device runs programmatic dependent launch (sm_90+)
	pdl                   PDL           // how a decode step's kernels launch (fused.go: LORAPLEX_PDL, SetPDL); PDLOff below sm_90
	gemvDeep              bool          // batch-1 GEMVs with deeper weight streams (fused.go: LORAPLEX_GEMV_DEEP, SetGEMVDeep)
	gemvStream            bool          // batch-1 GEMVs load weights past L1 (fused.go: LORAPLEX_GEMV_STREAM, SetGEMVStream)
	decodeSplit           DecodeSplit   // decode attention's split rule (attention.go)
	decodeDepth           int           // the context and grouped fill rules' most splits (attention.go: LORAPLEX_DECODE_DEEP, SetDecodeDeep)
	gqFillChunk           int           // the grouped fill rule's fewest positions a split (attention.go: LORAPLEX_GQ_FILL_CHUNK, SetGroupedFillChunk)
	groupedDecode         bool          // decode attention on the grouped kernel where it takes the shape (attention.go)
	gqPrefetch            bool          // the grouped kernel prefetches each tile's values (attention.go: LORAPLEX_GQ_PREFETCH, SetGQPrefetch)
	ctxSplits             int           // the context rule's grid depth for this step: its decode rows' largest split count
	keyBuf                []byte        // the step key with what the backend adds to it (BeginStep)
	groupArgs             loraGroupArgs // LoRAGroup's launch arguments (fused.go)
	gemvArgs              gemvPartsArgs // MatMulShared's launch arguments (fused.go)
	step                  *model.Step

	kv     model.KVSpec
	kcache []uintptr
	vcache []uintptr

	// Grown on demand (in practice during the first steps), never per step.
	xbf    uintptr // bf16 copy of a GEMM input
	xbfCap int
	// kept: the fp32 normed rows normKeptProducts' LoRA shrinks read (lorafold.go).
	kept    uintptr
	keptCap int
	// padX and padOut: deterministic mode's padded cuBLAS products (deterministic.go paddedGEMM):
	// one chunk of x in bf16 (padRows rows) and the chunk's fp32 products (capacities in elements).
	padX, padOut       uintptr
	padXCap, padOutCap int
	segHost            unsafe.Pointer // pinned lp_lora_seg ring (cudaMallocHost), not Go memory
	segDev             uintptr
	segCap             int
	segUsed            int
	loraTmp            uintptr
	// attnScratch holds the split-K partials of decode attention and of the tensor-core prefill
	// (one after the other on the stream: the prefill merge reads its partials before decode writes).
	attnScratch uintptr
	attnCap     int
	loraCap     int
	segSize     int
	// The tables segDev holds as the last recorded or replayed step left them (SegmentKeeper,
	// graph.go): the runner's version of their lists and the recording that reads them; zero
	// once anything else may have written there.
	devSegs, prevSegs segTable
	segVersion        uint64 // this step's (StepSegments)
	segsKept          bool   // this step replays devSegs as they are: no op runs, EndStep copies nothing
	keptReplays       int    // replays that kept devSegs (KeptSegmentReplays)
	segKeep           bool   // StepSegments may keep them (graph.go: LORAPLEX_SEGMENT_KEEP, SetSegmentKeep)
	segMerge          bool   // MergesSegments (graph.go: LORAPLEX_SEGMENT_MERGE, SetSegmentMerge)
	segsPut           int    // segments written to the ring (SegmentsPut)
	gemmSkinny        bool   // products of few outputs on the skinny kernel (ops.go: LORAPLEX_GEMM_SKINNY, SetGemmSkinny)
	skinnyProducts    int    // products it took (SkinnyProducts)
	gatesBatched      bool   // MatMulShared batches gates laid out one after another (ops.go: LORAPLEX_GATES_BATCHED, SetGatesBatched)
	batchedProducts   int    // products its batched calls took (BatchedProducts)
	routeStaged       bool   // routing blocks read their row's logits from shared memory (route.go: LORAPLEX_ROUTE_STAGED)
	forkRows          int    // products calls of at most this many rows fork onto the lanes; 0 off (fork.go: LORAPLEX_PRODUCTS_FORK, SetProductsFork)
	lanes             []lane // the fork's side lanes, made when it is first turned on
	forkEvent         C.uintptr_t
	forked            int  // products issued on the side lanes (ForkedProducts)
	pending           int  // lanes a products call left for the stream's next use to join (fork.go: work)
	forkBeside        bool // a routed group's routing shrinks run beside the pending lanes (fork.go: LORAPLEX_FORK_BESIDE, SetForkBeside)

	// Host time of replayed steps (graph.go, ReplayHostTime): from Prepare, once the stream is
	// idle, to the graph's launch.
	hostFrom    time.Time
	hostReplays int
	hostTotal   time.Duration

	// CUDA graphs (graph.go).
	mode      execMode
	broken    bool
	noGraphs  bool
	capKey    string
	graphs    map[string]*graphEntry
	replaying *graphEntry
	useCount  uint64
	// gemvRows: products with at most this many rows use the GEMV kernel (<= LP_GEMV_MAX_ROWS); see MatMul.
	gemvRows int
	// batchInvariant: deterministic mode (deterministic.go).
	batchInvariant bool
	// detGEMM: deterministic mode's product kernel (deterministic.go: LORAPLEX_DETERMINISTIC_GEMM,
	// SetDeterministicGEMM).
	detGEMM DeterministicGEMM
	// detSmall: deterministic mode's tensor-core products of up to 8 rows take the kernel's
	// small-n variant (deterministic.go: LORAPLEX_DETERMINISTIC_SMALL, SetDeterministicSmall).
	detSmall bool
	// detWide: the tensor-core kernel's variant for deterministic products of more than 8 rows
	// (deterministic.go: LORAPLEX_DETERMINISTIC_WIDE, SetDeterministicWide).
	detWide DeterministicWide

	// up uploads and frees whole adapters (upload.go, slabpool.go, devicedecode.go): slab pool, pinned staging, upload streams.
	up uploader
}

// New opens GPU number device.
func New(device int) (*Backend, error) {
	info, err := DeviceProps(device) // also checks device against the device count
	if err != nil {
		return nil, err
	}
	b := &Backend{device: device, segSize: int(C.seg_size()), gemvRows: 1, sms: info.SMs}
	switch os.Getenv("LORAPLEX_PREFILL_ATTENTION") {
	case "tensor-cores":
	case "cuda-cores":
		b.simtPrefill = true
	default:
		b.simtPrefill = !tensorCorePrefillDefault
	}
	b.fusedDecode = envSwitch("LORAPLEX_FUSED_DECODE", fusedDecodeDefault)
	b.loraGroup = envSwitch("LORAPLEX_LORA_GROUP", loraGroupDefault)
	b.loraWide = envSwitch("LORAPLEX_LORA_WIDE", loraWideDefault)
	b.routedWide = envSwitch("LORAPLEX_ROUTED_WIDE", routedWideDefault)
	b.routedFused = envSwitch("LORAPLEX_ROUTED_FUSED", routedFusedDefault)
	b.routedGroup = envSwitch("LORAPLEX_ROUTED_GROUP", routedGroupDefault)
	b.routedEM, b.routedEMMin = envSwitch("LORAPLEX_ROUTED_EXPERT_MAJOR", routedEMDefault), routedEMMinDefault
	b.routedRows, b.routedRowsMin = routedRowsFromEnv(routedRowsDefault, b.routedRowsMinDefault())
	b.routeFirst, b.routeFirstMin = envSwitch("LORAPLEX_ROUTE_FIRST", routeFirstDefault), routeFirstMinDefault
	b.routedFold = envSwitch("LORAPLEX_ROUTED_FOLD", routedFoldDefault)
	b.prefillSplit = envSwitch("LORAPLEX_PREFILL_SPLIT", prefillSplitDefault)
	b.prefillWide = envSwitch("LORAPLEX_PREFILL_WIDE", prefillWideDefault)
	b.normGEMV = envSwitch("LORAPLEX_NORM_GEMV", normGEMVDefault)
	b.swigluBF16 = envSwitch("LORAPLEX_SWIGLU_BF16", swigluBF16Default)
	b.routedBF16 = envSwitch("LORAPLEX_ROUTED_BF16", routedBF16Default)
	b.normBF16 = envSwitch("LORAPLEX_NORM_BF16", normBF16Default)
	b.normKeep = envSwitch("LORAPLEX_NORM_KEEP", normKeepDefault)
	b.loraSwiGLU = envSwitch("LORAPLEX_LORA_SWIGLU", loraSwiGLUDefault)
	b.loraRoPE = envSwitch("LORAPLEX_LORA_ROPE", loraRoPEDefault)
	b.normVec = envSwitch("LORAPLEX_NORM_VEC", normVecDefault)
	b.normStage = envSwitch("LORAPLEX_NORM_STAGE", normStageDefault)
	b.normStagePair = envSwitch("LORAPLEX_NORM_STAGE_PAIR", normStagePairDefault)
	b.loraFold = envSwitch("LORAPLEX_LORA_FOLD", loraFoldDefault)
	b.segKeep = envSwitch("LORAPLEX_SEGMENT_KEEP", segKeepDefault)
	b.segMerge = envSwitch("LORAPLEX_SEGMENT_MERGE", segMergeDefault)
	b.gemmSkinny = envSwitch("LORAPLEX_GEMM_SKINNY", gemmSkinnyDefault)
	b.gatesBatched = envSwitch("LORAPLEX_GATES_BATCHED", gatesBatchedDefault)
	b.routeStaged = envSwitch("LORAPLEX_ROUTE_STAGED", routeStagedDefault)
	b.pdlCapable = info.Major >= 9
	b.SetPDL(pdlFromEnv())
	b.gemvDeep = envSwitch("LORAPLEX_GEMV_DEEP", gemvDeepDefault)
	b.gemvStream = envSwitch("LORAPLEX_GEMV_STREAM", gemvStreamDefault)
	b.decodeSplit = decodeSplitFromEnv()
	b.SetDecodeDeep(envSwitch("LORAPLEX_DECODE_DEEP", decodeDeepDefault))
	b.SetGroupedFillChunk(envInt("LORAPLEX_GQ_FILL_CHUNK", int(C.LP_GQ_FILL_CHUNK), 1, 1<<20))
	b.groupedDecode = envSwitch("LORAPLEX_GROUPED_DECODE", groupedDecodeDefault)
	b.gqPrefetch = envSwitch("LORAPLEX_GQ_PREFETCH", gqPrefetchDefault)
	b.detGEMM = deterministicGEMMFromEnv()
	b.detSmall = envSwitch("LORAPLEX_DETERMINISTIC_SMALL", deterministicSmallDefault)
	b.detWide = deterministicWideFromEnv()
	b.up.capBytes = DefaultAdapterPoolCap
	if err := cudaError("set device", C.lp_set_device(C.int(device))); err != nil {
		return nil, err
	}
	if err := cudaError("stream", C.s_stream_create(&b.stream)); err != nil {
		return nil, err
	}
	if b.blas, err = b.newBlas(b.stream); err != nil {
		return nil, err
	}
	b.forkBeside = envSwitch("LORAPLEX_FORK_BESIDE", forkBesideDefault)
	if err := b.SetProductsFork(forkFromEnv()); err != nil {
		return nil, err
	}
	b.name = fmt.Sprintf("cuda:%d %s", device, info)
	return b, nil
}

func (b *Backend) Name() string { return b.name }

// The optional backend capabilities this backend implements (model/doc.go lists them all).
var (
	_ model.StepRecorder     = (*Backend)(nil)
	_ model.StepSynchronizer = (*Backend)(nil)
	_ model.FailureReporter  = (*Backend)(nil)
	_ model.DeviceSampler    = (*Backend)(nil)
	_ model.DeviceRouter     = (*Backend)(nil)
	_ model.AdapterUploader  = (*Backend)(nil)
	_ model.EncodedUploader  = (*Backend)(nil)
)

// Err implements model.FailureReporter: the sticky error, if any. Once a CUDA call failed the
// backend refuses all work.
func (b *Backend) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// ok records a failed call and reports whether work may continue.
func (b *Backend) ok(op string, code C.int) bool {
	if code == 0 {
		return true
	}
	if b.mode == modeCapture {
		// Something refused to be recorded: abandon the recording, stop recording from now on,
		// and let the step run directly (where a real failure does become sticky).
		b.broken, b.noGraphs = true, true
		C.lp_last_error()
		return false
	}
	b.mu.Lock()
	if b.err == nil {
		b.err = cudaError(op, code)
	}
	b.mu.Unlock()
	return false
}

func (b *Backend) failed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err != nil
}

func (b *Backend) malloc(bytes int) (uintptr, error) {
	var p C.uintptr_t
	if err := cudaError("malloc", C.s_malloc(&p, C.size_t(max(bytes, 1)))); err != nil {
		return 0, err
	}
	return uintptr(p), nil
}

func ptr(t model.Tensor) C.uintptr_t {
	d := t.Buf.(dev)
	size := 4
	if t.DType == model.BF16 {
		size = 2
	}
	return C.uintptr_t(d.ptr + uintptr(t.Off*size))
}

// Upload converts on the host (matrices to bf16, vectors to fp32) and copies synchronously.
func (b *Backend) Upload(h model.HostTensor, rows, cols int) (model.Tensor, error) {
	if h.Encoded != nil { // its Data is not its values: only UploadAdapter decodes it
		return model.Tensor{}, fmt.Errorf("cuda: %s is %s-encoded: only UploadAdapter decodes on the device", h.Name, h.Encoded.Codec)
	}
	n := rows * cols
	if len(h.Data) != n*h.DType.Size() {
		return model.Tensor{}, fmt.Errorf("cuda: %s holds %d bytes, want %d for %dx%d %s", h.Name, len(h.Data), n*h.DType.Size(), rows, cols, h.DType)
	}
	var host []byte
	t := model.Tensor{Rows: rows, Cols: cols}
	if len(h.Shape) == 1 { // norm weights and biases stay fp32
		t.DType = model.F32
		f := make([]float32, n)
		for i := range f {
			f[i] = h.At(i)
		}
		host = unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), 4*n)
	} else {
		t.DType = model.BF16
		if h.DType == model.BF16 {
			host = h.Data
		} else {
			u := make([]uint16, n)
			for i := range u {
				u[i] = model.F32ToBF16(h.At(i))
			}
			host = unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(u))), 2*n)
		}
	}
	p, err := b.malloc(len(host))
	if err != nil {
		return model.Tensor{}, fmt.Errorf("%s: %w", h.Name, err)
	}
	if len(host) > 0 {
		// Synchronous on the legacy stream: pageable memory, and the caller may reuse it.
		if err := cudaError("upload", C.s_htod(C.uintptr_t(p), unsafe.Pointer(&host[0]), C.size_t(len(host)), 0)); err != nil {
			C.s_free(C.uintptr_t(p))
			return model.Tensor{}, err
		}
		if err := cudaError("upload sync", C.s_stream_sync(0)); err != nil {
			return model.Tensor{}, err
		}
	}
	t.Buf = dev{p}
	return t, nil
}

// Free releases a tensor made by Upload or Alloc. Views (Off != 0) are left alone, which
// includes the tensors of adapters made by UploadAdapter (freed with their slab, FreeAdapter).
func (b *Backend) Free(t model.Tensor) {
	if d, ok := t.Buf.(dev); ok && d.ptr != 0 && t.Off == 0 {
		C.s_free(C.uintptr_t(d.ptr))
	}
}

func (b *Backend) Alloc(rows, cols int) model.Tensor {
	p, err := b.malloc(rows * cols * 4)
	if err != nil {
		b.ok("alloc", C.int(2)) // cudaErrorMemoryAllocation
		return model.Tensor{Rows: rows, Cols: cols, DType: model.F32, Buf: dev{0}}
	}
	b.ok("memset", C.s_memset(C.uintptr_t(p), C.size_t(rows*cols*4), b.work()))
	return model.Tensor{Rows: rows, Cols: cols, DType: model.F32, Buf: dev{p}}
}

func (b *Backend) Write(t model.Tensor, src []float32) error {
	if len(src) != t.Rows*t.Cols || t.DType != model.F32 {
		return fmt.Errorf("cuda: Write of %d floats into %s %s", len(src), t.Shape(), t.DType)
	}
	if len(src) == 0 {
		return nil
	}
	if err := cudaError("write", C.s_htod(ptr(t), unsafe.Pointer(&src[0]), C.size_t(4*len(src)), b.work())); err != nil {
		return err
	}
	return cudaError("write sync", C.s_stream_sync(b.work()))
}

// KVElementBytes is 2: the KV cache holds 16-bit keys and values (model.KVElementSizer).
func (b *Backend) KVElementBytes() int { return 2 }

// MemInfo reports this backend's GPU's free and total memory now (model.MemoryReporter), what
// the server sizes the KV cache from once the weights are loaded.
func (b *Backend) MemInfo() (free, total uint64, err error) { return MemInfo(b.device) }

func (b *Backend) AllocKV(spec model.KVSpec) error {
	slots, width := spec.Pages*spec.PageSize, spec.KVHeads*spec.HeadDim
	if slots <= 0 || width <= 0 || spec.Layers <= 0 {
		return fmt.Errorf("cuda: bad KV spec %+v", spec)
	}
	if spec.HeadDim%2 != 0 || spec.HeadDim > maxHeadDim {
		return fmt.Errorf("cuda: head_dim %d not supported (even, at most %d)", spec.HeadDim, maxHeadDim)
	}
	// A new cache replaces the old one (recorded graphs pointed into it).
	b.dropGraphs()
	for i := range b.kcache {
		C.s_free(C.uintptr_t(b.kcache[i]))
		C.s_free(C.uintptr_t(b.vcache[i]))
	}
	b.kcache, b.vcache = nil, nil
	b.kv = spec
	for l := 0; l < spec.Layers; l++ {
		k, err := b.malloc(slots * width * 2)
		if err != nil {
			return fmt.Errorf("KV cache layer %d: %w", l, err)
		}
		v, err := b.malloc(slots * width * 2)
		if err != nil {
			return fmt.Errorf("KV cache layer %d: %w", l, err)
		}
		b.kcache, b.vcache = append(b.kcache, k), append(b.vcache, v)
	}
	return nil
}

// Limits the kernels support, read from the C ABI (kernels/shapes.h, loraplex_kernels.h).
const (
	maxHeadDim  = int(C.LP_MAX_HEAD_DIM)
	maxLoRARank = int(C.LP_MAX_LORA_RANK)
	prefillTile = int(C.LP_PREFILL_TILE)
	// prefillMMATile: rows per tile of the tensor-core prefill kernel (head dims C.lp_prefill_mma_ok).
	prefillMMATile = int(C.LP_PREFILL_MMA_TILE)
	// prefillWideTile: rows per tile of its wide plan (head dims C.lp_prefill_wide_ok, SetPrefillWide).
	prefillWideTile = int(C.LP_PREFILL_WIDE_TILE)
	// maxPrefillSplits: most key runs a tensor-core prefill tile splits into (prefillSplits).
	maxPrefillSplits = int(C.LP_PREFILL_MAX_SPLITS)
	// loraGroupMax: projections one LoRAGroup call takes (q/k/v).
	loraGroupMax = int(C.LP_LORA_GROUP)
	// loraWideMaxSplits: most k-slices the wide LoRA shrink splits an input into (loraWideLayout).
	loraWideMaxSplits = int(C.LP_LORA_WIDE_MAX_SPLITS)
	// gemvPartsMax: products one MatMulShared launch takes (q/k/v, and routed steps' gates).
	gemvPartsMax = int(C.LP_GEMV_PARTS)
)

// Every MatMulShared call the runner makes fits one launch (a negative array length otherwise).
var _ [gemvPartsMax - model.MaxSharedProducts]struct{}

// tensorCorePrefillDefault: whether prefill attention runs on the tensor-core kernel unless
// LORAPLEX_PREFILL_ATTENTION (tensor-cores or cuda-cores) or SetPrefillAttention says otherwise.
// On since its GPU tests passed on an H100 (TestPrefillAttentionSweep, within 6e-3 of the
// largest output) and it measured 17.6x the CUDA-core kernel's attention time per layer on a
// 2,048-token prompt (0.373 against 6.575 ms; the whole prefill 3.8x, bench/results/gpu-goals-h100.md).
const tensorCorePrefillDefault = true

// prefillMMA reports whether prefill attention runs on the tensor-core kernel: head dims 64, 80,
// 128 and 256 (kernels/attention_prefill_mma.cu) unless SetPrefillAttention(false) chose the
// CUDA-core kernel.
func (b *Backend) prefillMMA() bool {
	return !b.simtPrefill && C.lp_prefill_mma_ok(C.int(b.kv.HeadDim)) != 0
}

// prefillTileRows is the rows per prefill tile of a step whose longest tiled chunk has `longest`
// rows: LP_PREFILL_TILE on the CUDA-core kernel, LP_PREFILL_MMA_TILE on the tensor-core one, or
// LP_PREFILL_WIDE_TILE with the wide plan on (SetPrefillWide) for the head dims it takes and
// steps with a chunk of at least that many rows: a shorter chunk would leave most of a tall
// tile's rows idle, and the split rule already spreads a short chunk's keys over the GPU.
func (b *Backend) prefillTileRows(longest int) int {
	switch {
	case !b.prefillMMA():
		return prefillTile
	case b.prefillWide && longest >= prefillWideTile && C.lp_prefill_wide_ok(C.int(b.kv.HeadDim)) != 0:
		return prefillWideTile
	}
	return prefillMMATile
}

// SetPrefillAttention chooses the prefill attention kernel for the following steps: true the
// tensor-core kernel where the head dim has one, false the CUDA-core kernel (for benchmarks
// that compare the two and tests that check both against the CPU).
func (b *Backend) SetPrefillAttention(tensorCores bool) { b.simtPrefill = !tensorCores }

func consecutive(pos []int32) bool {
	for i := 1; i < len(pos); i++ {
		if pos[i] != pos[i-1]+1 {
			return false
		}
	}
	return true
}

// Prepare validates the step and copies its metadata to the device in one transfer.
func (b *Backend) Prepare(s *model.Step) error {
	if err := b.Err(); err != nil {
		return err
	}
	if err := model.CheckStep(s, b.kv); err != nil {
		return fmt.Errorf("cuda: %w", err)
	}
	n := len(s.Tokens)
	pages := 0
	for _, sq := range s.Seqs {
		pages += len(sq.Pages)
	}
	// The previous step's copies out of the pinned buffers must be done before we overwrite them.
	if !b.ok("sync", C.s_stream_sync(b.work())) {
		return b.Err()
	}
	b.hostFrom = time.Now()
	// Prefill chunks (several consecutive positions of one sequence) go to the tiled attention
	// kernel in tiles of prefillTileRows rows; single rows (decode) to the per-row kernel.
	// In deterministic mode every row takes the per-row kernel (deterministic.go).
	tiled := func(sq model.SeqRows) bool {
		return !b.batchInvariant && sq.N > 1 && b.kv.HeadDim%8 == 0 && consecutive(s.Positions[sq.Start:sq.Start+sq.N])
	}
	longest := 0
	for _, sq := range s.Seqs {
		if tiled(sq) {
			longest = max(longest, sq.N)
		}
	}
	tile := b.prefillTileRows(longest)
	tiles, rows := 0, 0
	b.ctxSplits, b.tileKeys, b.rowKeys = 1, 0, 0
	for _, sq := range s.Seqs {
		if tiled(sq) {
			tiles += (sq.N + tile - 1) / tile
		} else {
			rows += sq.N
		}
	}
	need := 4*n + len(s.Seqs) + pages + len(s.LogitRows) + 3*tiles + rows
	if need > b.metaCap {
		if err := b.growMeta(need); err != nil {
			return err
		}
	}
	// Sections whose sizes the step key fixes come first and the page table (which grows as
	// sequences grow) last: recorded graphs bake these offsets into their kernel arguments.
	b.offTokens, b.offPos, b.offSlots, b.offRowSeq = 0, n, 2*n, 3*n
	b.offSeqPages = 4 * n
	b.offLogit = b.offSeqPages + len(s.Seqs)
	b.offTiles = b.offLogit + len(s.LogitRows)
	b.offRows = b.offTiles + 3*tiles
	b.offPages = b.offRows + rows
	b.numTiles, b.numRows, b.tileRows = tiles, rows, tile
	h := unsafe.Slice((*int32)(b.metaHost), b.metaCap)
	copy(h[b.offTokens:], s.Tokens)
	copy(h[b.offPos:], s.Positions)
	copy(h[b.offSlots:], s.Slots)
	copy(h[b.offLogit:], s.LogitRows)
	o, ti, ri := b.offPages, b.offTiles, b.offRows
	for i, sq := range s.Seqs {
		for r := sq.Start; r < sq.Start+sq.N; r++ {
			h[b.offRowSeq+r] = int32(i)
		}
		h[b.offSeqPages+i] = int32(o - b.offPages)
		o += copy(h[o:], sq.Pages)
		if tiled(sq) {
			// The chunk's last tile sees the most keys: every position up to its last row.
			b.tileKeys = max(b.tileKeys, int(s.Positions[sq.Start+sq.N-1])+1)
			for r := 0; r < sq.N; r += tile {
				h[ti], h[ti+1], h[ti+2] = int32(sq.Start+r), int32(min(tile, sq.N-r)), int32(i)
				ti += 3
			}
			continue
		}
		for r := sq.Start; r < sq.Start+sq.N; r++ {
			h[ri] = int32(r)
			ri++
			b.ctxSplits = max(b.ctxSplits, b.contextSplits(s.Positions[r]))
			b.rowKeys += int(s.Positions[r]) + 1
		}
	}
	if !b.ok("metadata copy", C.s_htod(C.uintptr_t(b.metaDev), b.metaHost, C.size_t(4*need), b.work())) {
		return b.Err()
	}
	b.step = s
	b.segUsed = 0
	return nil
}

func (b *Backend) growMeta(need int) error {
	b.dropGraphs()
	need = max(need*2, 4096)
	if b.metaHost != nil {
		C.lp_free_host(b.metaHost)
		C.s_free(C.uintptr_t(b.metaDev))
	}
	var hp unsafe.Pointer
	if err := cudaError("pinned alloc", C.lp_malloc_host(&hp, C.size_t(4*need))); err != nil {
		return err
	}
	d, err := b.malloc(4 * need)
	if err != nil {
		return err
	}
	b.metaHost, b.metaDev, b.metaCap = hp, d, need
	return nil
}

func (b *Backend) meta(off int) C.uintptr_t { return C.uintptr_t(b.metaDev + uintptr(4*off)) }

func (b *Backend) Read(t model.Tensor, dst []float32) error {
	if len(dst) != t.Rows*t.Cols {
		return fmt.Errorf("cuda: Read of %s into %d floats", t.Shape(), len(dst))
	}
	if err := b.Err(); err != nil {
		return err
	}
	if len(dst) > 0 && !b.ok("read", C.s_dtoh(unsafe.Pointer(&dst[0]), ptr(t), C.size_t(4*len(dst)), b.work())) {
		return b.Err()
	}
	b.ok("read sync", C.s_stream_sync(b.work()))
	return b.Err()
}
