//go:build !linux

package cpu

// Huge pages are asked for on Linux only; elsewhere the copy has the system's pages.
func adviseHugePages([]byte)   {}
func collapseHugePages([]byte) {}
