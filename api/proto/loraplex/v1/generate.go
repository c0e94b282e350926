// Package loraplexv1 is the generated Go code for loraplex.v1 (loraplex.proto). Only this file
// is written by hand.
package loraplexv1

// Regenerate every .proto under api/proto with pinned tool versions (see api/proto/README.md).
//go:generate ../../generate.sh
