// Package safetensors reads (and, for tests and tools, writes) the Hugging Face safetensors
// format: an 8-byte little-endian header length N, N bytes of JSON describing each tensor's
// dtype, shape and byte range, then one data buffer holding the tensors back to back.
//
// Files are memory-mapped read-only: Tensor.Data aliases the mapping, so opening a
// multi-gigabyte checkpoint costs no copy and pages are faulted in only when used. The slices
// must not be written to, and must not be used after Close.
//
// Validation is strict (the same checks as the reference Rust implementation plus a few more):
// a file that passes Parse has every tensor inside the data buffer, tensors cover the buffer
// contiguously without overlap, and each tensor's byte length equals its element count times
// its dtype size. Errors are *FormatError naming the file and, where it applies, the tensor.
//
// This package must not import model (model imports it); dtype strings are kept as written and
// converted by the caller.
package safetensors
