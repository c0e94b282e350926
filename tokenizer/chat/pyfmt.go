package chat

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

func pyPrintable(r rune) bool { return unicode.IsPrint(r) }

// percentFormat is Python's "fmt % args" for the conversions templates use:
// %s %r %d %i %f %e %g %x %X %o %c and %%, with flags, width and precision.
// A tuple supplies several arguments; a dict supplies %(name)s lookups.
func percentFormat(f string, arg value) (value, error) {
	var args []value
	d, isDict := arg.(*dictVal)
	if l, ok := arg.(*listVal); ok && l.tuple {
		args = l.items
	} else {
		args = []value{arg}
	}
	next := 0
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			b.WriteByte(f[i])
			continue
		}
		i++
		if i >= len(f) {
			return nil, errors.New("incomplete format")
		}
		var cur value
		haveCur := false
		if f[i] == '(' {
			j := strings.IndexByte(f[i:], ')')
			if j < 0 || !isDict {
				return nil, errors.New("format requires a mapping")
			}
			v, ok := d.get(f[i+1 : i+j])
			if !ok {
				return nil, fmt.Errorf("KeyError: %s", pyStrRepr(f[i+1:i+j]))
			}
			cur, haveCur = v, true
			i += j + 1
		}
		start := i
		for i < len(f) && strings.IndexByte("-+ #0123456789.", f[i]) >= 0 {
			i++
		}
		if i >= len(f) {
			return nil, errors.New("incomplete format")
		}
		spec := f[start:i]
		conv := f[i]
		if conv == '%' {
			b.WriteByte('%')
			continue
		}
		if !haveCur {
			if next >= len(args) {
				return nil, errors.New("not enough arguments for format string")
			}
			cur = args[next]
			next++
		}
		s, err := formatOne(spec, conv, cur)
		if err != nil {
			return nil, err
		}
		b.WriteString(s)
		if err := checkLen(b.Len()); err != nil {
			return nil, err
		}
	}
	if !isDict && next < len(args) {
		return nil, errors.New("not all arguments converted during string formatting")
	}
	return b.String(), nil
}

func formatOne(spec string, conv byte, v value) (string, error) {
	if strings.ContainsAny(spec, "123456789") {
		// Guard against absurd widths before handing them to fmt.
		w := strings.TrimLeft(spec, "-+ #0")
		if n, _ := strconv.Atoi(strings.SplitN(w, ".", 2)[0]); n > 10000 {
			return "", errors.New("format width too large")
		}
	}
	switch conv {
	case 's':
		return fmt.Sprintf("%"+strings.Trim(spec, "+ #0")+"s", toStr(v)), nil
	case 'r', 'a':
		return fmt.Sprintf("%"+strings.Trim(spec, "+ #0")+"s", repr(v)), nil
	case 'd', 'i', 'x', 'X', 'o', 'c':
		n, ok := toNumber(v)
		if !ok {
			return "", fmt.Errorf("%%%c format: a real number is required, not %s", conv, typeName(v))
		}
		i := n.i
		if !n.isInt {
			i = int64(n.f)
		}
		c := conv
		if c == 'i' {
			c = 'd'
		}
		if c == 'c' {
			return string(rune(i)), nil
		}
		return fmt.Sprintf("%"+spec+string(c), i), nil
	case 'f', 'F', 'e', 'E', 'g', 'G':
		n, ok := toNumber(v)
		if !ok {
			return "", fmt.Errorf("must be real number, not %s", typeName(v))
		}
		if !strings.Contains(spec, ".") && conv != 'g' && conv != 'G' {
			spec += ".6"
		}
		return fmt.Sprintf("%"+spec+string(conv), n.float()), nil
	}
	return "", fmt.Errorf("unsupported format character '%c'", conv)
}

// strFormat is str.format with automatic ("{}"), numbered ("{0}") and named
// ("{name}") fields, !s/!r conversions and format specs; attribute and item
// access inside fields ("{0.name}", "{0[1]}") is not supported.
func strFormat(f string, args []value, kw *dictVal) (value, error) {
	var b strings.Builder
	auto := 0
	for i := 0; i < len(f); i++ {
		c := f[i]
		if c == '}' {
			if i+1 < len(f) && f[i+1] == '}' {
				i++
			}
			b.WriteByte('}')
			continue
		}
		if c != '{' {
			b.WriteByte(c)
			continue
		}
		if i+1 < len(f) && f[i+1] == '{' {
			b.WriteByte('{')
			i++
			continue
		}
		j := strings.IndexByte(f[i:], '}')
		if j < 0 {
			return nil, errors.New("single '{' encountered in format string")
		}
		field := f[i+1 : i+j]
		i += j
		name, spec, _ := strings.Cut(field, ":")
		conv := ""
		if k := strings.IndexByte(name, '!'); k >= 0 {
			name, conv = name[:k], name[k+1:]
		}
		var v value
		switch {
		case name == "":
			if auto >= len(args) {
				return nil, fmt.Errorf("Replacement index %d out of range for positional args tuple", auto)
			}
			v = args[auto]
			auto++
		case name[0] >= '0' && name[0] <= '9':
			n, err := strconv.Atoi(name)
			if err != nil || n >= len(args) {
				return nil, fmt.Errorf("Replacement index %s out of range for positional args tuple", name)
			}
			v = args[n]
		default:
			x, ok := kw.get(name)
			if !ok {
				return nil, fmt.Errorf("KeyError: %s", pyStrRepr(name))
			}
			v = x
		}
		s := toStr(v)
		if conv == "r" {
			s = repr(v)
		}
		if spec != "" {
			var x value = v
			if conv != "" {
				x = s // !s / !r convert before formatting
			}
			var err error
			if s, err = pyFormat(x, spec); err != nil {
				return nil, err
			}
		}
		b.WriteString(s)
		if err := checkLen(b.Len()); err != nil {
			return nil, err
		}
	}
	return b.String(), nil
}
