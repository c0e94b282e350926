package cuda

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// A products call may leave its side lanes pending (fork.go), so the backend's stream and its
// cuBLAS handle are reached only through work() and mainQueue(), which join them first: raw uses
// stay in fork.go, in New where they are made, and on lines that say they run beside the lanes
// (a routed group's routing shrinks, the gates' skinny launch). This holds on every build: the
// rule is about the source, which a machine without CUDA reads as well.
func TestStreamThroughWork(t *testing.T) {
	raw := regexp.MustCompile(`\bb\.(stream|blas)\b`)
	made := regexp.MustCompile(`s_stream_create\(&b\.stream\)|b\.blas, err = b\.newBlas\(b\.stream\)`)
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked, beside := 0, 0
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") || path == "fork.go" {
			continue
		}
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for i, line := range strings.Split(string(src), "\n") {
			if !raw.MatchString(line) || strings.HasPrefix(strings.TrimSpace(line), "//") {
				continue
			}
			switch {
			case made.MatchString(line):
			case strings.Contains(line, "// beside the lanes"):
				beside++
			default:
				t.Errorf("%s:%d uses the stream or the cuBLAS handle without joining the lanes (work, mainQueue): %s", path, i+1, strings.TrimSpace(line))
			}
		}
	}
	if checked < 15 || beside == 0 {
		t.Fatalf("read %d files of the package, %d launches beside the lanes: is this the cuda folder?", checked, beside)
	}
}
