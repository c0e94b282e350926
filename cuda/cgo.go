//go:build cuda

package cuda

/*
#cgo CFLAGS: -I${SRCDIR}/../kernels
#cgo LDFLAGS: -L${SRCDIR}/../kernels/build -lloraplex_kernels -L/usr/local/cuda/lib64 -lcublas -lcudart -lstdc++ -lm
#include "shims.h"
*/
import "C"

import "fmt"

// cudaError turns a status code into an error; codes >= 1000 are cuBLAS statuses.
func cudaError(op string, code C.int) error {
	if code == 0 {
		return nil
	}
	if code >= 1000 {
		return fmt.Errorf("cuda: %s: cuBLAS status %d", op, int(code)-1000)
	}
	return fmt.Errorf("cuda: %s: %s (error %d)", op, C.GoString(C.lp_error_string(code)), int(code))
}
