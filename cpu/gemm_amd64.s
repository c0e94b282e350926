//go:build amd64 && !purego

#include "textflag.h"

// Register-blocked GEMM micro-kernels over a packed weight panel (matmul.go says why).
// panel holds 16 weight rows transposed and widened to float32: panel[p*16+c] = w[j0+c][p].

// ROW6 multiplies the panel row in Y12:Y13 by x[row][p] (broadcast) into one row's two
// accumulators.
#define ROW6(xr, a, b) \
	VBROADCASTSS (xr)(DX*4), Y14; \
	VFMADD231PS  Y12, Y14, a; \
	VFMADD231PS  Y13, Y14, b

// STORE scales a row's accumulators by alpha (Y14) and writes them to (R10), then steps R10
// to the next output row.
#define STORE(a, b) \
	VMULPS  Y14, a, a; \
	VMULPS  Y14, b, b; \
	VMOVUPS a, (R10); \
	VMOVUPS b, 32(R10); \
	ADDQ    R8, R10

// STOREACC is STORE that first adds what the output holds (accumulate).
#define STOREACC(a, b) \
	VMULPS  Y14, a, a; \
	VMULPS  Y14, b, b; \
	VADDPS  (R10), a, a; \
	VADDPS  32(R10), b, b; \
	VMOVUPS a, (R10); \
	VMOVUPS b, 32(R10); \
	ADDQ    R8, R10

// func gemm6x16AVX2(x *float32, ldx int, panel *float32, k int, out *float32, ldo int, alpha float32, accumulate bool)
// out[i][c] = alpha * sum_p x[i*ldx+p] * panel[p*16+c] (+ out[i][c]) for i < 6, c < 16, k >= 1.
// Twelve accumulators (6 rows x 2 vectors of 8 columns); per p, two panel loads and six
// broadcasts feed twelve FMAs. Each output is one FMA chain in p order, as in gemm1x16AVX2.
TEXT ·gemm6x16AVX2(SB), NOSPLIT, $0-53
	MOVQ   x+0(FP), R10
	MOVQ   ldx+8(FP), R8
	SHLQ   $2, R8
	LEAQ   (R10)(R8*1), R11
	LEAQ   (R11)(R8*1), R12
	LEAQ   (R12)(R8*1), R13
	LEAQ   (R13)(R8*1), AX
	LEAQ   (AX)(R8*1), BX
	MOVQ   panel+16(FP), DI
	MOVQ   k+24(FP), CX
	XORQ   DX, DX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11

g6loop:
	VMOVUPS (DI), Y12
	VMOVUPS 32(DI), Y13
	ROW6(R10, Y0, Y1)
	ROW6(R11, Y2, Y3)
	ROW6(R12, Y4, Y5)
	ROW6(R13, Y6, Y7)
	ROW6(AX, Y8, Y9)
	ROW6(BX, Y10, Y11)
	ADDQ    $64, DI
	INCQ    DX
	CMPQ    DX, CX
	JLT     g6loop

	MOVQ         out+32(FP), R10
	MOVQ         ldo+40(FP), R8
	SHLQ         $2, R8
	VBROADCASTSS alpha+48(FP), Y14
	MOVBLZX      accumulate+52(FP), CX
	TESTQ        CX, CX
	JNE          g6acc
	STORE(Y0, Y1)
	STORE(Y2, Y3)
	STORE(Y4, Y5)
	STORE(Y6, Y7)
	STORE(Y8, Y9)
	STORE(Y10, Y11)
	VZEROUPPER
	RET

g6acc:
	STOREACC(Y0, Y1)
	STOREACC(Y2, Y3)
	STOREACC(Y4, Y5)
	STOREACC(Y6, Y7)
	STOREACC(Y8, Y9)
	STOREACC(Y10, Y11)
	VZEROUPPER
	RET

// func gemm1x16AVX2(x *float32, panel *float32, k int, out *float32, alpha float32, accumulate bool)
// One row of gemm6x16AVX2 (the rows a block of six leaves), with the same per-output FMA order.
TEXT ·gemm1x16AVX2(SB), NOSPLIT, $0-37
	MOVQ   x+0(FP), R10
	MOVQ   panel+8(FP), DI
	MOVQ   k+16(FP), CX
	XORQ   DX, DX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1

g1loop:
	VMOVUPS (DI), Y12
	VMOVUPS 32(DI), Y13
	ROW6(R10, Y0, Y1)
	ADDQ    $64, DI
	INCQ    DX
	CMPQ    DX, CX
	JLT     g1loop

	MOVQ         out+24(FP), R10
	XORQ         R8, R8
	VBROADCASTSS alpha+32(FP), Y14
	MOVBLZX      accumulate+36(FP), CX
	TESTQ        CX, CX
	JNE          g1acc
	STORE(Y0, Y1)
	VZEROUPPER
	RET

g1acc:
	STOREACC(Y0, Y1)
	VZEROUPPER
	RET

// LOAD8 widens 8 bfloat16 weights at addr into the 8 float32 lanes of y.
#define LOAD8(addr, y) \
	VPMOVZXWD addr, y; \
	VPSLLD    $16, y, y

// TRANSPOSE8 stores the 8x8 block of rows Y0-Y7 transposed: lane j of every row goes to
// (DI + j*64 + off) (clobbers Y0-Y13).
#define TRANSPOSE8(off) \
	VUNPCKLPS  Y1, Y0, Y8; \
	VUNPCKHPS  Y1, Y0, Y9; \
	VUNPCKLPS  Y3, Y2, Y10; \
	VUNPCKHPS  Y3, Y2, Y11; \
	VUNPCKLPS  Y5, Y4, Y12; \
	VUNPCKHPS  Y5, Y4, Y13; \
	VUNPCKLPS  Y7, Y6, Y0; \
	VUNPCKHPS  Y7, Y6, Y1; \
	VSHUFPS    $0x44, Y10, Y8, Y2; \
	VSHUFPS    $0xEE, Y10, Y8, Y3; \
	VSHUFPS    $0x44, Y11, Y9, Y4; \
	VSHUFPS    $0xEE, Y11, Y9, Y5; \
	VSHUFPS    $0x44, Y0, Y12, Y6; \
	VSHUFPS    $0xEE, Y0, Y12, Y7; \
	VSHUFPS    $0x44, Y1, Y13, Y8; \
	VSHUFPS    $0xEE, Y1, Y13, Y9; \
	VPERM2F128 $0x20, Y6, Y2, Y10; \
	VPERM2F128 $0x31, Y6, Y2, Y11; \
	VMOVUPS    Y10, off(DI); \
	VMOVUPS    Y11, off+256(DI); \
	VPERM2F128 $0x20, Y7, Y3, Y10; \
	VPERM2F128 $0x31, Y7, Y3, Y11; \
	VMOVUPS    Y10, off+64(DI); \
	VMOVUPS    Y11, off+320(DI); \
	VPERM2F128 $0x20, Y8, Y4, Y10; \
	VPERM2F128 $0x31, Y8, Y4, Y11; \
	VMOVUPS    Y10, off+128(DI); \
	VMOVUPS    Y11, off+384(DI); \
	VPERM2F128 $0x20, Y9, Y5, Y10; \
	VPERM2F128 $0x31, Y9, Y5, Y11; \
	VMOVUPS    Y10, off+192(DI); \
	VMOVUPS    Y11, off+448(DI)

// func packBF16AVX2(dst *float32, w *uint16, k, n8 int)
// dst[p*16+c] = float32(w[c*k+p]) for c < 16, p < n8 (a multiple of 8): 8x8 blocks widened and
// transposed in registers, rows 0-7 to columns 0-7 and rows 8-15 to columns 8-15.
TEXT ·packBF16AVX2(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ w+8(FP), R10
	MOVQ k+16(FP), R8
	SHLQ $1, R8
	MOVQ n8+24(FP), CX
	LEAQ (R10)(R8*2), R11
	LEAQ (R11)(R8*1), R11 // row 3
	LEAQ (R11)(R8*2), R12
	LEAQ (R12)(R8*1), R12 // row 6
	LEAQ (R12)(R8*2), R13 // row 8

pkloop:
	CMPQ CX, $8
	JLT  pkdone
	LOAD8((R10), Y0)
	LOAD8((R10)(R8*1), Y1)
	LOAD8((R10)(R8*2), Y2)
	LOAD8((R11), Y3)
	LOAD8((R11)(R8*1), Y4)
	LOAD8((R11)(R8*2), Y5)
	LOAD8((R12), Y6)
	LOAD8((R12)(R8*1), Y7)
	TRANSPOSE8(0)
	LEAQ (R13)(R8*2), AX
	LEAQ (AX)(R8*1), AX   // row 11
	LEAQ (AX)(R8*2), BX
	LEAQ (BX)(R8*1), BX   // row 14
	LOAD8((R13), Y0)
	LOAD8((R13)(R8*1), Y1)
	LOAD8((R13)(R8*2), Y2)
	LOAD8((AX), Y3)
	LOAD8((AX)(R8*1), Y4)
	LOAD8((AX)(R8*2), Y5)
	LOAD8((BX), Y6)
	LOAD8((BX)(R8*1), Y7)
	TRANSPOSE8(32)
	ADDQ $16, R10
	ADDQ $16, R11
	ADDQ $16, R12
	ADDQ $16, R13
	ADDQ $512, DI
	SUBQ $8, CX
	JMP  pkloop

pkdone:
	VZEROUPPER
	RET
