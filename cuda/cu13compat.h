// cu13compat.h lets gorgonia.org/cu v0.9.6 build against CUDA 13's cuda.h. The build
// force-includes it into every cgo compilation (the Makefile's CGO_CFLAGS:
// -I$CUDA_HOME/include -include <this file>), since cu's own preambles only include <cuda.h>.
//
// CUDA 13 changed five driver functions that cu calls: cuCtxCreate (now cuCtxCreate_v4, with a
// params pointer), cuMemAdvise and cuMemPrefetchAsync (now a CUmemLocation instead of a
// CUdevice), cuGraphAddDependencies and cuGraphGetEdges (now with edge data). cuda.h maps each
// name to its new version with a macro; for CUDA_VERSION >= 13000 this header removes those
// macros and defines the old signatures as static inline functions over the new ones (no
// params, no edge data, the device as a location: CU_DEVICE_CPU as the host). Older toolkits
// get cuda.h unchanged. loraplex itself uses cu only for device discovery, properties and
// memory info (cuda/device.go), none of these five.
//
// CGO_CFLAGS also reaches runtime/cgo's C and assembly files: the guard keeps the assembler out,
// and _GNU_SOURCE comes before any system header (cuda.h includes stdlib.h) so that runtime/cgo's
// own _GNU_SOURCE (pthread_getattr_np, setres[ug]id) still takes effect.
#if !defined(__ASSEMBLER__)
#ifndef LORAPLEX_CU13COMPAT_H
#define LORAPLEX_CU13COMPAT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <stddef.h>
#include <cuda.h>

#if CUDA_VERSION >= 13000
#undef cuCtxCreate
#undef cuMemAdvise
#undef cuMemPrefetchAsync
#undef cuGraphAddDependencies
#undef cuGraphGetEdges

static inline CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev) {
	return cuCtxCreate_v4(pctx, NULL, flags, dev);
}

// lp_cu13_location is the CUmemLocation the pre-13 device argument meant.
static inline CUmemLocation lp_cu13_location(CUdevice dev) {
	CUmemLocation loc;
	if (dev == CU_DEVICE_CPU) {
		loc.type = CU_MEM_LOCATION_TYPE_HOST;
		loc.id = 0;
	} else {
		loc.type = CU_MEM_LOCATION_TYPE_DEVICE;
		loc.id = (int)dev;
	}
	return loc;
}

static inline CUresult cuMemAdvise(CUdeviceptr devPtr, size_t count, CUmem_advise advice, CUdevice device) {
	return cuMemAdvise_v2(devPtr, count, advice, lp_cu13_location(device));
}

static inline CUresult cuMemPrefetchAsync(CUdeviceptr devPtr, size_t count, CUdevice dstDevice, CUstream hStream) {
	return cuMemPrefetchAsync_v2(devPtr, count, lp_cu13_location(dstDevice), 0, hStream);
}

static inline CUresult cuGraphAddDependencies(CUgraph hGraph, const CUgraphNode *from, const CUgraphNode *to, size_t numDependencies) {
	return cuGraphAddDependencies_v2(hGraph, from, to, NULL, numDependencies);
}

static inline CUresult cuGraphGetEdges(CUgraph hGraph, CUgraphNode *from, CUgraphNode *to, size_t *numEdges) {
	return cuGraphGetEdges_v2(hGraph, from, to, NULL, numEdges);
}
#endif // CUDA_VERSION >= 13000

#endif // LORAPLEX_CU13COMPAT_H
#endif // !__ASSEMBLER__
