// Device decoding of lorapack's q8 / q4 streams (lorapack/quant.go) straight into an
// adapter's slab (cuda/devicedecode.go). Each value decodes exactly as the CPU decoder does: the
// group's maximum M (bf16), step = M / Q in double, value = float32(step * k), rounded to bf16
// (nearest even). Corrupt codes or maxima never fault: they set the tensor's error word, which
// the uploader reads back and turns into an error for that adapter.
#include "common.cuh"

// lp_dequant_desc (loraplex_kernels.h) is one tensor to decode, written by cuda/devicedecode.go.
static_assert(sizeof(lp_dequant_desc) == 40, "lp_dequant_desc is 40 bytes");

__global__ void dequant_kernel(const lp_dequant_desc* __restrict__ descs) {
    const lp_dequant_desc d = descs[blockIdx.y];
    const uint8_t* p = (const uint8_t*)d.src;
    uint16_t* out = (uint16_t*)d.dst;
    const uint32_t n = d.n, g = d.group;
    const uint32_t shift = __ffs(g) - 1;
    const uint64_t ng = ((uint64_t)n + g - 1) >> shift;
    const uint8_t* codes = p + 2 * ng;
    const double q = d.q4 ? 7.0 : 127.0;
    bool bad = false;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t gi = i >> shift;
        const uint16_t mb = (uint16_t)p[2 * gi] | (uint16_t)((uint16_t)p[2 * gi + 1] << 8);
        int k;
        if (d.q4) {
            const uint8_t b = codes[i >> 1];
            const int nib = (i & 1) ? (b >> 4) : (b & 15);
            k = (nib ^ 8) - 8;
            bad |= nib == 8;
            if ((n & 1) && i == n - 1 && (b >> 4) != 0) bad = true;  // the padding nibble
        } else {
            k = (int)(int8_t)codes[i];
            bad |= k == -128;
        }
        bad |= (mb & 0x8000) != 0 || (mb & 0x7f80) == 0x7f80 || (mb == 0 && k != 0);
        const double step = __ddiv_rn((double)bf16_to_f32(mb), q);
        const float v = __double2float_rn(__dmul_rn(step, (double)k));
        out[i] = f32_to_bf16(v);
    }
    if (bad) atomicOr((int*)d.err, 1);
}

extern "C" {

// lp_dequant decodes ntensors tensors described by descs (device memory); maxn is the largest n.
int lp_dequant(const lp_dequant_desc* descs, int ntensors, unsigned int maxn, lp_stream s) {
    if (ntensors <= 0 || maxn == 0) return 0;
    const int threads = 256;
    unsigned int bx = (maxn + threads - 1) / threads;
    if (bx > 4096) bx = 4096;
    const lp_dequant_desc* d = descs;
    for (int first = 0; first < ntensors; first += 65535) {
        int cnt = ntensors - first < 65535 ? ntensors - first : 65535;
        dequant_kernel<<<dim3(bx, cnt), threads, 0, as_stream(s)>>>(d + first);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return (int)e;
    }
    return 0;
}

}  // extern "C"
