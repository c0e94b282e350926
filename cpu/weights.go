package cpu

import (
	"fmt"
	"runtime/debug"
	"unsafe"

	"github.com/loraplex/loraplex/model"
)

// CopyWeights implements model.WeightCopier (--no-mmap): it copies every tensor of the base
// model (the layers' matrices, norms and biases, the embedding table and the lm_head; a tied
// head once) into one block of memory of the backend's own, asking the kernel for transparent
// huge pages there, and points the tensors at the copies. Upload kept F32 and BF16 tensors in
// the file mapping, so afterwards nothing of the base model reads the file. It returns the
// bytes copied.
//
// Why: a batch-1 decode step streams every matrix once, and on this kind of machine the
// streaming rate depends on the pages it streams from. The file mapping is in 4 KiB pages (the
// page cache of a regular file is not mapped in huge pages here), so the step takes a TLB miss
// every 4 KiB and the hardware prefetcher stops at every page boundary. The same bytes in
// anonymous 2 MiB pages streamed 25-31 GB/s on two cores against 20-25 GB/s from the mapping
// (interleaved, AMD EPYC, 2 vCPUs), and 100M-shape decode went from 89-91 to 97-112 tok/s.
//
// The cost is memory: the copy is the process's own (the page cache of the file stays, clean
// and reclaimable), and it is made once at start-up, at memory speed. The values are the same
// bits, so every result is unchanged. Reads of the mapping during the copy are guarded like any
// other (fault.go); afterwards the base model no longer reads the file, so a file changed under
// the server no longer faults (adapters are not copied: they keep their own rules).
func (b *Backend) CopyWeights(w *model.Weights) (n int64, err error) {
	defer func() {
		if err == nil {
			err = b.Err()
		}
	}()
	if err := b.Err(); err != nil {
		return 0, err
	}
	defer b.guard(debug.SetPanicOnFault(true))
	ts := []*model.Tensor{&w.Embed, &w.LMHead, &w.Norm}
	for l := range w.Layers {
		L := &w.Layers[l]
		ts = append(ts, &L.AttnNorm, &L.MLPNorm, &L.QNorm, &L.KNorm)
		for p := range L.W {
			ts = append(ts, &L.W[p], &L.Bias[p])
		}
	}
	// Each tensor starts on a cache line; one that two fields share (tied embeddings) is
	// copied once.
	type placed struct{ off, size int }
	at := map[uintptr]placed{}
	total := 0
	for _, t := range ts {
		src, ok := tensorBytes(*t)
		if !ok {
			continue
		}
		key := uintptr(unsafe.Pointer(unsafe.SliceData(src)))
		if _, ok := at[key]; !ok {
			at[key] = placed{total, len(src)}
			total += (len(src) + 63) &^ 63
		}
	}
	if total == 0 {
		return 0, nil
	}
	block := hugePageBlock(total)
	copied := map[uintptr]bool{}
	for _, t := range ts {
		src, ok := tensorBytes(*t)
		if !ok {
			continue
		}
		key := uintptr(unsafe.Pointer(unsafe.SliceData(src)))
		pl := at[key]
		dst := block[pl.off : pl.off+pl.size : pl.off+pl.size]
		if !copied[key] {
			copy(dst, src)
			copied[key] = true
		}
		switch t.DType {
		case model.BF16:
			t.Buf = unsafe.Slice((*uint16)(unsafe.Pointer(unsafe.SliceData(dst))), pl.size/2)
		case model.F32:
			t.Buf = unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(dst))), pl.size/4)
		}
		t.Off = 0
	}
	collapseHugePages(block)
	return int64(total), nil
}

// tensorBytes is a BF16 or F32 tensor's elements as bytes; ok is false for an empty (absent)
// tensor.
func tensorBytes(t model.Tensor) (b []byte, ok bool) {
	n := t.Rows * t.Cols
	if n == 0 {
		return nil, false
	}
	switch t.DType {
	case model.BF16:
		s := bf16(t)
		return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), 2*n), true
	case model.F32:
		s := f32(t)
		return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), 4*n), true
	}
	panic(fmt.Sprintf("cpu: CopyWeights: a %s tensor", t.DType))
}

// hugePage is the transparent huge page size of x86-64 and arm64 (4 KiB base pages).
const hugePage = 2 << 20

// hugePageBlock returns n bytes of Go memory starting on a huge-page boundary, advised for huge
// pages before it is first touched. Being Go memory, it lives as long as a tensor points into it.
func hugePageBlock(n int) []byte {
	raw := make([]byte, n+hugePage)
	skip := (hugePage - int(uintptr(unsafe.Pointer(unsafe.SliceData(raw)))%hugePage)) % hugePage
	block := raw[skip : skip+n : skip+n]
	adviseHugePages(block)
	return block
}
