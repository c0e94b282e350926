package benchenv

import (
	"fmt"

	"github.com/loraplex/loraplex/cpu"
)

// NewBackend opens "cpu" (threads 0 = GOMAXPROCS) or "cuda" (device 0, needs -tags cuda).
func NewBackend(device string, threads int) (Backend, func(), error) {
	switch device {
	case "cpu":
		b := cpu.New(threads)
		return b, b.Close, nil
	case "cuda":
		return newCUDA()
	}
	return nil, nil, fmt.Errorf("device %q: want cpu or cuda", device)
}
