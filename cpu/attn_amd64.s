//go:build amd64 && !purego

#include "textflag.h"
#include "exp_amd64.h"

// Attention kernels (attnkern.go says why they are shaped this way). All take head-dimension
// vectors whose length is a multiple of 8; the Go wrappers check that and handle the rest.

// func scoresAVX2(q, k []float32, stride, n int, scale float32, out []float32)
// out[t] = scale * (q · k[t*stride : t*stride+len(q)]) for t < n; n a multiple of 4, len(q) of 8.
// Four keys per pass: each key has two 8-lane accumulators (even and odd 8-float blocks), so
// eight independent FMA chains hide the latency, and one q load feeds four keys.
TEXT ·scoresAVX2(SB), NOSPLIT, $0-96
	MOVQ         q_base+0(FP), SI
	MOVQ         q_len+8(FP), DX
	MOVQ         k_base+24(FP), DI
	MOVQ         stride+48(FP), R8
	SHLQ         $2, R8
	MOVQ         n+56(FP), CX
	VBROADCASTSS scale+64(FP), X14
	MOVQ         out_base+72(FP), R9

sckeys:
	CMPQ   CX, $4
	JLT    scdone
	LEAQ   (DI)(R8*1), R10
	LEAQ   (R10)(R8*1), R11
	LEAQ   (R11)(R8*1), R12
	XORQ   BX, BX
	MOVQ   DX, AX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	CMPQ   AX, $16
	JLT    sctail8

scloop16:
	VMOVUPS     (SI)(BX*1), Y8
	VMOVUPS     32(SI)(BX*1), Y9
	VFMADD231PS (DI)(BX*1), Y8, Y0
	VFMADD231PS (R10)(BX*1), Y8, Y1
	VFMADD231PS (R11)(BX*1), Y8, Y2
	VFMADD231PS (R12)(BX*1), Y8, Y3
	VFMADD231PS 32(DI)(BX*1), Y9, Y4
	VFMADD231PS 32(R10)(BX*1), Y9, Y5
	VFMADD231PS 32(R11)(BX*1), Y9, Y6
	VFMADD231PS 32(R12)(BX*1), Y9, Y7
	ADDQ        $64, BX
	SUBQ        $16, AX
	CMPQ        AX, $16
	JGE         scloop16

sctail8:
	CMPQ        AX, $8
	JLT         screduce
	VMOVUPS     (SI)(BX*1), Y8
	VFMADD231PS (DI)(BX*1), Y8, Y0
	VFMADD231PS (R10)(BX*1), Y8, Y1
	VFMADD231PS (R11)(BX*1), Y8, Y2
	VFMADD231PS (R12)(BX*1), Y8, Y3

screduce:
	VADDPS       Y4, Y0, Y0
	VADDPS       Y5, Y1, Y1
	VADDPS       Y6, Y2, Y2
	VADDPS       Y7, Y3, Y3
	VHADDPS      Y1, Y0, Y0
	VHADDPS      Y3, Y2, Y2
	VHADDPS      Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VMULPS       X14, X0, X0
	VMOVUPS      X0, (R9)
	ADDQ         $16, R9
	LEAQ         (R12)(R8*1), DI
	SUBQ         $4, CX
	JMP          sckeys

scdone:
	VZEROUPPER
	RET

// func accumAVX2(p, v []float32, stride int, o []float32)
// o[i] += sum over t < len(p) of p[t] * v[t*stride + i], for i < len(o) (a multiple of 8). The
// output block stays in registers while the keys stream past: 64 floats (8 accumulators) at a
// time, then 32, then 8. Each o[i] gets its terms in t order, one FMA each.
TEXT ·accumAVX2(SB), NOSPLIT, $0-80
	MOVQ p_base+0(FP), SI
	MOVQ p_len+8(FP), CX
	MOVQ v_base+24(FP), DI
	MOVQ stride+48(FP), R8
	SHLQ $2, R8
	MOVQ o_base+56(FP), R9
	MOVQ o_len+64(FP), DX

ac64:
	CMPQ    DX, $64
	JLT     ac32
	VMOVUPS 0(R9), Y0
	VMOVUPS 32(R9), Y1
	VMOVUPS 64(R9), Y2
	VMOVUPS 96(R9), Y3
	VMOVUPS 128(R9), Y4
	VMOVUPS 160(R9), Y5
	VMOVUPS 192(R9), Y6
	VMOVUPS 224(R9), Y7
	MOVQ    DI, R10
	XORQ    AX, AX

ac64t:
	CMPQ         AX, CX
	JGE          ac64store
	VBROADCASTSS (SI)(AX*4), Y8
	VFMADD231PS  0(R10), Y8, Y0
	VFMADD231PS  32(R10), Y8, Y1
	VFMADD231PS  64(R10), Y8, Y2
	VFMADD231PS  96(R10), Y8, Y3
	VFMADD231PS  128(R10), Y8, Y4
	VFMADD231PS  160(R10), Y8, Y5
	VFMADD231PS  192(R10), Y8, Y6
	VFMADD231PS  224(R10), Y8, Y7
	ADDQ         R8, R10
	INCQ         AX
	JMP          ac64t

ac64store:
	VMOVUPS Y0, 0(R9)
	VMOVUPS Y1, 32(R9)
	VMOVUPS Y2, 64(R9)
	VMOVUPS Y3, 96(R9)
	VMOVUPS Y4, 128(R9)
	VMOVUPS Y5, 160(R9)
	VMOVUPS Y6, 192(R9)
	VMOVUPS Y7, 224(R9)
	ADDQ    $256, R9
	ADDQ    $256, DI
	SUBQ    $64, DX
	JMP     ac64

ac32:
	CMPQ    DX, $32
	JLT     ac8
	VMOVUPS 0(R9), Y0
	VMOVUPS 32(R9), Y1
	VMOVUPS 64(R9), Y2
	VMOVUPS 96(R9), Y3
	MOVQ    DI, R10
	XORQ    AX, AX

ac32t:
	CMPQ         AX, CX
	JGE          ac32store
	VBROADCASTSS (SI)(AX*4), Y8
	VFMADD231PS  0(R10), Y8, Y0
	VFMADD231PS  32(R10), Y8, Y1
	VFMADD231PS  64(R10), Y8, Y2
	VFMADD231PS  96(R10), Y8, Y3
	ADDQ         R8, R10
	INCQ         AX
	JMP          ac32t

ac32store:
	VMOVUPS Y0, 0(R9)
	VMOVUPS Y1, 32(R9)
	VMOVUPS Y2, 64(R9)
	VMOVUPS Y3, 96(R9)
	ADDQ    $128, R9
	ADDQ    $128, DI
	SUBQ    $32, DX
	JMP     ac32

ac8:
	CMPQ    DX, $8
	JLT     acdone
	VMOVUPS 0(R9), Y0
	MOVQ    DI, R10
	XORQ    AX, AX

ac8t:
	CMPQ         AX, CX
	JGE          ac8store
	VBROADCASTSS (SI)(AX*4), Y8
	VFMADD231PS  0(R10), Y8, Y0
	ADDQ         R8, R10
	INCQ         AX
	JMP          ac8t

ac8store:
	VMOVUPS Y0, 0(R9)
	ADDQ    $32, R9
	ADDQ    $32, DI
	SUBQ    $8, DX
	JMP     ac8

acdone:
	VZEROUPPER
	RET

// func maxAVX2(x []float32) float32
// The largest of x[:len(x)&^7] (len(x) >= 8): eight lanes of VMAXPS, then a fold.
TEXT ·maxAVX2(SB), NOSPLIT, $0-28
	MOVQ    x_base+0(FP), SI
	MOVQ    x_len+8(FP), CX
	VMOVUPS (SI), Y0
	ADDQ    $32, SI
	SUBQ    $8, CX

mxloop:
	CMPQ    CX, $8
	JLT     mxfold
	VMAXPS  (SI), Y0, Y0
	ADDQ    $32, SI
	SUBQ    $8, CX
	JMP     mxloop

mxfold:
	VEXTRACTF128 $1, Y0, X1
	VMAXPS       X1, X0, X0
	VMOVHLPS     X0, X0, X1
	VMAXPS       X1, X0, X0
	VMOVSHDUP    X0, X1
	VMAXSS       X1, X0, X0
	VZEROUPPER
	MOVSS        X0, ret+24(FP)
	RET

// func expSubAVX2(x []float32, m float32) float32
// x[i] = exp(x[i] - m) for i < len(x)&^7 and returns their sum (eight lane sums, then a fold).
// exp is EXP8 (exp_amd64.h), expF32 lane by lane.
TEXT ·expSubAVX2(SB), NOSPLIT, $0-36
	MOVQ         x_base+0(FP), SI
	MOVQ         x_len+8(FP), CX
	VBROADCASTSS m+24(FP), Y15
	EXPCONSTS
	VXORPS       Y9, Y9, Y9 // the sum

exloop:
	CMPQ    CX, $8
	JLT     exdone
	VMOVUPS (SI), Y0
	VSUBPS  Y15, Y0, Y0
	EXP8
	VMOVUPS Y2, (SI)
	VADDPS  Y2, Y9, Y9
	ADDQ    $32, SI
	SUBQ    $8, CX
	JMP     exloop

exdone:
	VEXTRACTF128 $1, Y9, X1
	VADDPS       X1, X9, X0
	VMOVHLPS     X0, X0, X1
	VADDPS       X1, X0, X0
	VMOVSHDUP    X0, X1
	VADDSS       X1, X0, X0
	VZEROUPPER
	MOVSS        X0, ret+32(FP)
	RET

// func siluMulAVX2(out, gate, up []float32)
// out[i] = gate[i] / (1 + exp(-gate[i])) * up[i] for i < len(out)&^7, in that operation order
// (torch's float32 silu, then the product), exp being EXP8.
TEXT ·siluMulAVX2(SB), NOSPLIT, $0-72
	MOVQ   out_base+0(FP), DI
	MOVQ   out_len+8(FP), CX
	MOVQ   gate_base+24(FP), SI
	MOVQ   up_base+48(FP), DX
	EXPCONSTS
	VXORPS Y9, Y9, Y9
	MOVL   $0x3f800000, AX
	VMOVD  AX, X8
	VBROADCASTSS X8, Y8 // 1

smloop:
	CMPQ    CX, $8
	JLT     smdone
	VMOVUPS (SI), Y5
	VSUBPS  Y5, Y9, Y0 // -g
	EXP8
	VADDPS  Y8, Y2, Y2
	VDIVPS  Y2, Y5, Y6
	VMULPS  (DX), Y6, Y6
	VMOVUPS Y6, (DI)
	ADDQ    $32, SI
	ADDQ    $32, DX
	ADDQ    $32, DI
	SUBQ    $8, CX
	JMP     smloop

smdone:
	VZEROUPPER
	RET
