//go:build cuda

package cuda

/*
#cgo CFLAGS: -I${SRCDIR}/../kernels
#cgo LDFLAGS: -L${SRCDIR}/../kernels/build -lloraplex_kernels -L/usr/local/cuda/lib64 -lcublas -lcudart -lstdc++ -lm
#include "shims.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

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

// DeviceCount reports how many CUDA devices the runtime sees (0 with an error when no driver).
func DeviceCount() (int, error) {
	var n C.int
	if err := cudaError("device count", C.lp_device_count(&n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

func deviceName(dev int) string {
	buf := make([]byte, 256)
	if C.lp_device_name(C.int(dev), (*C.char)(unsafe.Pointer(&buf[0])), C.int(len(buf))) != 0 {
		return fmt.Sprintf("cuda:%d", dev)
	}
	return C.GoString((*C.char)(unsafe.Pointer(&buf[0])))
}
