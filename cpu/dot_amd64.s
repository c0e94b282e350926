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
