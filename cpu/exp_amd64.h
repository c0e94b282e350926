// EXPCONSTS and EXP8: float32 exp of eight lanes, expF32 (attnkern.go) lane by lane, with the
// same constants and the same FMAs (expF32 rounds its FMAs through float64, so the two may
// differ in a last bit, rarely): clamp to [-87.33654, 88], n = round(x·log2 e), r = x - n·ln2 in
// two FMA steps (Cody-Waite), a degree-5 polynomial, times 2^n built in the exponent field.

// EXPCONSTS loads the clamp bounds, log2(e) and the two parts of ln2 into Y10-Y14 (clobbers AX).
#define EXPCONSTS \
	MOVL         $0xc2aeac4f, AX; \
	VMOVD        AX, X14; \
	VBROADCASTSS X14, Y14; \
	MOVL         $0x42b00000, AX; \
	VMOVD        AX, X13; \
	VBROADCASTSS X13, Y13; \
	MOVL         $0x3fb8aa3b, AX; \
	VMOVD        AX, X12; \
	VBROADCASTSS X12, Y12; \
	MOVL         $0xbf318000, AX; \
	VMOVD        AX, X11; \
	VBROADCASTSS X11, Y11; \
	MOVL         $0x395e8083, AX; \
	VMOVD        AX, X10; \
	VBROADCASTSS X10, Y10

// POLY steps y (Y2) to y*r + c for the float32 constant with bits c (clobbers AX, Y3).
#define POLY(c) \
	MOVL         c, AX; \
	VMOVD        AX, X3; \
	VBROADCASTSS X3, Y3; \
	VFMADD213PS  Y3, Y0, Y2

// EXP8 sets Y2 = exp(Y0) lane by lane, after EXPCONSTS (clobbers AX, Y0, Y1, Y3, Y4).
#define EXP8 \
	VMAXPS       Y14, Y0, Y0; \
	VMINPS       Y13, Y0, Y0; \
	VMULPS       Y12, Y0, Y1; \
	VROUNDPS     $0, Y1, Y1; \
	VFMADD231PS  Y11, Y1, Y0; \
	VFMADD231PS  Y10, Y1, Y0; \
	MOVL         $0x39506967, AX; \
	VMOVD        AX, X2; \
	VBROADCASTSS X2, Y2; \
	POLY($0x3ab743ce); \
	POLY($0x3c088908); \
	POLY($0x3d2aa9c1); \
	POLY($0x3e2aaaaa); \
	POLY($0x3f000000); \
	VMULPS       Y0, Y0, Y4; \
	VFMADD213PS  Y0, Y4, Y2; \
	MOVL         $0x3f800000, AX; \
	VMOVD        AX, X3; \
	VBROADCASTSS X3, Y3; \
	VADDPS       Y3, Y2, Y2; \
	VCVTPS2DQ    Y1, Y1; \
	MOVL         $127, AX; \
	VMOVD        AX, X3; \
	VPBROADCASTD X3, Y3; \
	VPADDD       Y3, Y1, Y1; \
	VPSLLD       $23, Y1, Y1; \
	VMULPS       Y1, Y2, Y2
