//go:build amd64 && !purego

#include "textflag.h"

// func dotF32AVX2(x, w []float32) float32
// Requires len(w) >= len(x) (the Go caller reslices w). 32 floats per iteration into four
// 8-lane accumulators, then 8 at a time, then a scalar tail.
TEXT ·dotF32AVX2(SB), NOSPLIT, $0-52
	MOVQ   x_base+0(FP), SI
	MOVQ   x_len+8(FP), CX
	MOVQ   w_base+24(FP), DI
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	CMPQ   CX, $32
	JLT    f32tail8

f32loop32:
	VMOVUPS     0(DI), Y4
	VMOVUPS     32(DI), Y5
	VMOVUPS     64(DI), Y6
	VMOVUPS     96(DI), Y7
	VFMADD231PS 0(SI), Y4, Y0
	VFMADD231PS 32(SI), Y5, Y1
	VFMADD231PS 64(SI), Y6, Y2
	VFMADD231PS 96(SI), Y7, Y3
	ADDQ        $128, SI
	ADDQ        $128, DI
	SUBQ        $32, CX
	CMPQ        CX, $32
	JGE         f32loop32

f32tail8:
	CMPQ        CX, $8
	JLT         f32reduce
	VMOVUPS     (DI), Y4
	VFMADD231PS (SI), Y4, Y0
	ADDQ        $32, SI
	ADDQ        $32, DI
	SUBQ        $8, CX
	JMP         f32tail8

f32reduce:
	VADDPS       Y1, Y0, Y0
	VADDPS       Y3, Y2, Y2
	VADDPS       Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VMOVHLPS     X0, X0, X1
	VADDPS       X1, X0, X0
	VMOVSHDUP    X0, X1
	VADDSS       X1, X0, X0

f32tail1:
	TESTQ       CX, CX
	JEQ         f32done
	VMOVSS      (DI), X1
	VFMADD231SS (SI), X1, X0
	ADDQ        $4, SI
	ADDQ        $4, DI
	DECQ        CX
	JMP         f32tail1

f32done:
	VZEROUPPER
	MOVSS X0, ret+48(FP)
	RET

// func dotBF16AVX2(x []float32, w []uint16) float32
// Requires len(w) >= len(x). Each bfloat16 is widened to float32 by zero-extending to 32 bits
// (VPMOVZXWD) and shifting into the top half (VPSLLD $16); that is exact.
// Each pass prefetches the cache line 1 KiB ahead of the one it reads: a batch-1 decode step
// streams the weight rows one after the other, and the hardware prefetcher stops at every 4 KiB
// page, which the file mapping's weights are in. Streaming the 100M shape's weights from the
// mapping on two cores: 26.4-26.7 GB/s without, 27.4-30.1 with 1 KiB (512 B: 27.0-29.1, 2 KiB:
// 26.6-27.5, 4 KiB: 23.7-26.4), interleaved. A prefetch past the end of w is only a hint: it
// never faults.
TEXT ·dotBF16AVX2(SB), NOSPLIT, $0-52
	MOVQ   x_base+0(FP), SI
	MOVQ   x_len+8(FP), CX
	MOVQ   w_base+24(FP), DI
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	CMPQ   CX, $32
	JLT    bftail8

bfloop32:
	PREFETCHT0  1024(DI)
	VPMOVZXWD   0(DI), Y4
	VPMOVZXWD   16(DI), Y5
	VPMOVZXWD   32(DI), Y6
	VPMOVZXWD   48(DI), Y7
	VPSLLD      $16, Y4, Y4
	VPSLLD      $16, Y5, Y5
	VPSLLD      $16, Y6, Y6
	VPSLLD      $16, Y7, Y7
	VFMADD231PS 0(SI), Y4, Y0
	VFMADD231PS 32(SI), Y5, Y1
	VFMADD231PS 64(SI), Y6, Y2
	VFMADD231PS 96(SI), Y7, Y3
	ADDQ        $128, SI
	ADDQ        $64, DI
	SUBQ        $32, CX
	CMPQ        CX, $32
	JGE         bfloop32

bftail8:
	CMPQ        CX, $8
	JLT         bfreduce
	VPMOVZXWD   (DI), Y4
	VPSLLD      $16, Y4, Y4
	VFMADD231PS (SI), Y4, Y0
	ADDQ        $32, SI
	ADDQ        $16, DI
	SUBQ        $8, CX
	JMP         bftail8

bfreduce:
	VADDPS       Y1, Y0, Y0
	VADDPS       Y3, Y2, Y2
	VADDPS       Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VMOVHLPS     X0, X0, X1
	VADDPS       X1, X0, X0
	VMOVSHDUP    X0, X1
	VADDSS       X1, X0, X0

bftail1:
	TESTQ       CX, CX
	JEQ         bfdone
	MOVWLZX     (DI), AX
	SHLL        $16, AX
	VMOVD       AX, X1
	VFMADD231SS (SI), X1, X0
	ADDQ        $4, SI
	ADDQ        $2, DI
	DECQ        CX
	JMP         bftail1

bfdone:
	VZEROUPPER
	MOVSS X0, ret+48(FP)
	RET

// func dotBF16x4AVX2(x *float32, stride int, w *uint16, n int, out *[4]float32)
// out[r] = sum_i x[r*stride+i] * w[i] for r < 4, i < n; n must be a multiple of 8. One widened
// weight vector feeds four rows of x (batch > 1): the weight row is loaded and converted once.
TEXT ·dotBF16x4AVX2(SB), NOSPLIT, $0-40
	MOVQ   x+0(FP), R8
	MOVQ   stride+8(FP), AX
	MOVQ   w+16(FP), DI
	MOVQ   n+24(FP), CX
	SHLQ   $2, AX
	LEAQ   (R8)(AX*1), R9
	LEAQ   (R9)(AX*1), R10
	LEAQ   (R10)(AX*1), R11
	XORQ   BX, BX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	CMPQ   CX, $16
	JLT    bf4tail8

bf4loop16:
	VPMOVZXWD   0(DI), Y8
	VPMOVZXWD   16(DI), Y9
	VPSLLD      $16, Y8, Y8
	VPSLLD      $16, Y9, Y9
	VFMADD231PS (R8)(BX*1), Y8, Y0
	VFMADD231PS (R9)(BX*1), Y8, Y1
	VFMADD231PS (R10)(BX*1), Y8, Y2
	VFMADD231PS (R11)(BX*1), Y8, Y3
	VFMADD231PS 32(R8)(BX*1), Y9, Y4
	VFMADD231PS 32(R9)(BX*1), Y9, Y5
	VFMADD231PS 32(R10)(BX*1), Y9, Y6
	VFMADD231PS 32(R11)(BX*1), Y9, Y7
	ADDQ        $64, BX
	ADDQ        $32, DI
	SUBQ        $16, CX
	CMPQ        CX, $16
	JGE         bf4loop16

bf4tail8:
	CMPQ        CX, $8
	JLT         bf4reduce
	VPMOVZXWD   0(DI), Y8
	VPSLLD      $16, Y8, Y8
	VFMADD231PS (R8)(BX*1), Y8, Y0
	VFMADD231PS (R9)(BX*1), Y8, Y1
	VFMADD231PS (R10)(BX*1), Y8, Y2
	VFMADD231PS (R11)(BX*1), Y8, Y3

bf4reduce:
	MOVQ         out+32(FP), DX
	VADDPS       Y4, Y0, Y0
	VADDPS       Y5, Y1, Y1
	VADDPS       Y6, Y2, Y2
	VADDPS       Y7, Y3, Y3
	VHADDPS      Y1, Y0, Y0
	VHADDPS      Y3, Y2, Y2
	VHADDPS      Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VMOVUPS      X0, (DX)
	VZEROUPPER
	RET

// func dotF32x4AVX2(x *float32, stride int, w *float32, n int, out *[4]float32)
// As dotBF16x4AVX2 with float32 weights.
TEXT ·dotF32x4AVX2(SB), NOSPLIT, $0-40
	MOVQ   x+0(FP), R8
	MOVQ   stride+8(FP), AX
	MOVQ   w+16(FP), DI
	MOVQ   n+24(FP), CX
	SHLQ   $2, AX
	LEAQ   (R8)(AX*1), R9
	LEAQ   (R9)(AX*1), R10
	LEAQ   (R10)(AX*1), R11
	XORQ   BX, BX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	CMPQ   CX, $16
	JLT    f4tail8

f4loop16:
	VMOVUPS     0(DI), Y8
	VMOVUPS     32(DI), Y9
	VFMADD231PS (R8)(BX*1), Y8, Y0
	VFMADD231PS (R9)(BX*1), Y8, Y1
	VFMADD231PS (R10)(BX*1), Y8, Y2
	VFMADD231PS (R11)(BX*1), Y8, Y3
	VFMADD231PS 32(R8)(BX*1), Y9, Y4
	VFMADD231PS 32(R9)(BX*1), Y9, Y5
	VFMADD231PS 32(R10)(BX*1), Y9, Y6
	VFMADD231PS 32(R11)(BX*1), Y9, Y7
	ADDQ        $64, BX
	ADDQ        $64, DI
	SUBQ        $16, CX
	CMPQ        CX, $16
	JGE         f4loop16

f4tail8:
	CMPQ        CX, $8
	JLT         f4reduce
	VMOVUPS     0(DI), Y8
	VFMADD231PS (R8)(BX*1), Y8, Y0
	VFMADD231PS (R9)(BX*1), Y8, Y1
	VFMADD231PS (R10)(BX*1), Y8, Y2
	VFMADD231PS (R11)(BX*1), Y8, Y3

f4reduce:
	MOVQ         out+32(FP), DX
	VADDPS       Y4, Y0, Y0
	VADDPS       Y5, Y1, Y1
	VADDPS       Y6, Y2, Y2
	VADDPS       Y7, Y3, Y3
	VHADDPS      Y1, Y0, Y0
	VHADDPS      Y3, Y2, Y2
	VHADDPS      Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VMOVUPS      X0, (DX)
	VZEROUPPER
	RET

// func dotBF16x4AVX512(x *float32, stride int, w *uint16, n int, out *[4]float32)
// dotBF16x4AVX2 with 16-lane vectors: 32 weights per iteration, then the 8-wide tail and the
// reduction of the AVX2 version after folding each 16-lane accumulator to 8 lanes. n must be a
// multiple of 8.
TEXT ·dotBF16x4AVX512(SB), NOSPLIT, $0-40
	MOVQ    x+0(FP), R8
	MOVQ    stride+8(FP), AX
	MOVQ    w+16(FP), DI
	MOVQ    n+24(FP), CX
	SHLQ    $2, AX
	LEAQ    (R8)(AX*1), R9
	LEAQ    (R9)(AX*1), R10
	LEAQ    (R10)(AX*1), R11
	XORQ    BX, BX
	VPXORD  Z0, Z0, Z0
	VPXORD  Z1, Z1, Z1
	VPXORD  Z2, Z2, Z2
	VPXORD  Z3, Z3, Z3
	VPXORD  Z4, Z4, Z4
	VPXORD  Z5, Z5, Z5
	VPXORD  Z6, Z6, Z6
	VPXORD  Z7, Z7, Z7
	CMPQ    CX, $32
	JLT     z4fold

z4loop32:
	VPMOVZXWD   0(DI), Z8
	VPMOVZXWD   32(DI), Z9
	VPSLLD      $16, Z8, Z8
	VPSLLD      $16, Z9, Z9
	VFMADD231PS (R8)(BX*1), Z8, Z0
	VFMADD231PS (R9)(BX*1), Z8, Z1
	VFMADD231PS (R10)(BX*1), Z8, Z2
	VFMADD231PS (R11)(BX*1), Z8, Z3
	VFMADD231PS 64(R8)(BX*1), Z9, Z4
	VFMADD231PS 64(R9)(BX*1), Z9, Z5
	VFMADD231PS 64(R10)(BX*1), Z9, Z6
	VFMADD231PS 64(R11)(BX*1), Z9, Z7
	ADDQ        $128, BX
	ADDQ        $64, DI
	SUBQ        $32, CX
	CMPQ        CX, $32
	JGE         z4loop32

z4fold:
	VADDPS        Z4, Z0, Z0
	VADDPS        Z5, Z1, Z1
	VADDPS        Z6, Z2, Z2
	VADDPS        Z7, Z3, Z3
	VEXTRACTF64X4 $1, Z0, Y4
	VEXTRACTF64X4 $1, Z1, Y5
	VEXTRACTF64X4 $1, Z2, Y6
	VEXTRACTF64X4 $1, Z3, Y7
	VADDPS        Y4, Y0, Y0
	VADDPS        Y5, Y1, Y1
	VADDPS        Y6, Y2, Y2
	VADDPS        Y7, Y3, Y3
	VXORPS        Y4, Y4, Y4
	VXORPS        Y5, Y5, Y5
	VXORPS        Y6, Y6, Y6
	VXORPS        Y7, Y7, Y7

z4tail8:
	CMPQ        CX, $8
	JLT         z4reduce
	VPMOVZXWD   0(DI), Y8
	VPSLLD      $16, Y8, Y8
	VFMADD231PS (R8)(BX*1), Y8, Y0
	VFMADD231PS (R9)(BX*1), Y8, Y1
	VFMADD231PS (R10)(BX*1), Y8, Y2
	VFMADD231PS (R11)(BX*1), Y8, Y3
	ADDQ        $32, BX
	ADDQ        $16, DI
	SUBQ        $8, CX
	JMP         z4tail8

z4reduce:
	MOVQ         out+32(FP), DX
	VHADDPS      Y1, Y0, Y0
	VHADDPS      Y3, Y2, Y2
	VHADDPS      Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VMOVUPS      X0, (DX)
	VZEROUPPER
	RET
