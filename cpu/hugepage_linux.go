package cpu

import "golang.org/x/sys/unix"

// adviseHugePages asks for transparent huge pages in b (the default THP mode "madvise" gives
// them only where asked). A kernel without THP says no, and the copy then has base pages.
func adviseHugePages(b []byte) { _ = unix.Madvise(b, unix.MADV_HUGEPAGE) }

// collapseHugePages turns what b got in base pages into huge pages now (Linux 6.1+), instead of
// whenever khugepaged passes; older kernels refuse, and the pages stay as they are.
func collapseHugePages(b []byte) { _ = unix.Madvise(b, unix.MADV_COLLAPSE) }
