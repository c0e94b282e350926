package main

import (
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/loraplex/loraplex/lorapack"
	"github.com/loraplex/loraplex/model"
)

// sizes sums a manifest's tensors for the ratio lines.
type sizes struct {
	file, streams, bf16, orig int64
	origDTypes                string
}

func summarize(m *lorapack.Manifest, fileSize int64) sizes {
	s := sizes{file: fileSize}
	dts := map[string]bool{}
	for _, t := range m.Tensors {
		n := int64(t.Shape[0] * t.Shape[1])
		s.bf16 += 2 * n
		s.streams += int64(t.Bytes)
		es := int64(2)
		if dt, err := model.ParseDType(t.DType); err == nil {
			es = int64(dt.Size())
		}
		s.orig += es * n
		dts[t.DType] = true
	}
	for _, d := range slices.Sorted(func(yield func(string) bool) {
		for d := range dts {
			if !yield(d) {
				return
			}
		}
	}) {
		s.origDTypes += d + " "
	}
	s.origDTypes = strings.TrimSpace(s.origDTypes)
	return s
}

func (s sizes) ratioBF16() float64 { return float64(s.bf16) / float64(s.file) }
func (s sizes) ratioOrig() float64 { return float64(s.orig) / float64(s.file) }

func inspect(args []string, stdout io.Writer) error {
	pos, err := parse(flag.NewFlagSet("inspect", flag.ContinueOnError), args, 1)
	if err != nil {
		return err
	}
	c, err := lorapack.Open(pos[0])
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := os.Stat(pos[0])
	if err != nil {
		return err
	}
	m := c.Manifest
	fmt.Fprintf(stdout, "format:         %s\n", m.Format)
	fmt.Fprintf(stdout, "base model:     %s\n", m.BaseModel)
	fmt.Fprintf(stdout, "target modules: %s\n", m.TargetModules)
	fmt.Fprintf(stdout, "use_rslora:     %v\n", m.UseRSLoRA)
	if g := m.Global; g != nil {
		fmt.Fprintf(stdout, "mode:           global ComPEFT, density %g, alpha_c %g, sigma %.4g, threshold %.4g\n", g.Density, g.AlphaC, g.Sigma, g.Threshold)
	} else {
		fmt.Fprintf(stdout, "mode:           per tensor\n")
	}
	codecs := map[string]int{}
	for _, t := range m.Tensors {
		cd := t.Codec
		if t.Group != 0 {
			cd = fmt.Sprintf("%s/g%d", t.Codec, t.Group)
		}
		codecs[cd]++
	}
	var cs []string
	for _, cd := range slices.Sorted(maps.Keys(codecs)) {
		cs = append(cs, fmt.Sprintf("%s x%d", cd, codecs[cd]))
	}
	fmt.Fprintf(stdout, "codecs:         %s\n", strings.Join(cs, ", "))
	fmt.Fprintf(stdout, "modules:        %d\n\n", len(m.Modules))
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tensor\tcodec\tshape\tdtype\tdensity\tkept\tbytes\tbits/value\tvs bf16\t")
	for _, name := range naturalSorted(c.File.Names()) {
		t := m.Tensors[name]
		cd := t.Codec
		if t.Group != 0 {
			cd = fmt.Sprintf("%s/g%d", t.Codec, t.Group)
		}
		n := t.Shape[0] * t.Shape[1]
		fmt.Fprintf(tw, "%s\t%s\t%dx%d\t%s\t%g\t%d\t%d\t%.2f\t%.1fx\t\n", name, cd, t.Shape[0], t.Shape[1], t.DType,
			t.Density, t.Kept, t.Bytes, float64(8*t.Bytes)/float64(n), float64(2*n)/float64(t.Bytes))
	}
	tw.Flush()
	s := summarize(m, st.Size())
	fmt.Fprintf(stdout, "\ntotal: %d tensors, file %d bytes (streams %d, header and manifest %d); bf16 %d bytes (%.1fx); original %s %d bytes (%.1fx)\n",
		len(m.Tensors), s.file, s.streams, s.file-s.streams, s.bf16, s.ratioBF16(), s.origDTypes, s.orig, s.ratioOrig())
	return nil
}

// naturalSorted orders names with numbers compared by value, so layer 2 comes before layer 10
// as in the file.
func naturalSorted(names []string) []string {
	out := slices.Clone(names)
	slices.SortFunc(out, func(a, b string) int {
		for a != "" && b != "" {
			da, db := digits(a), digits(b)
			if da > 0 && db > 0 {
				na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
				if c := len(na) - len(nb); c != 0 {
					return c
				}
				if c := strings.Compare(na, nb); c != 0 {
					return c
				}
				a, b = a[da:], b[db:]
				continue
			}
			if a[0] != b[0] {
				return int(a[0]) - int(b[0])
			}
			a, b = a[1:], b[1:]
		}
		return len(a) - len(b)
	})
	return out
}

func digits(s string) int {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}
