package chat

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// formatSpec is a parsed Python format specification,
// [[fill]align][sign][#][0][width][grouping][.precision][type].
type formatSpec struct {
	fill      rune
	align     byte // '<', '>', '^', '=' or 0
	sign      byte // '+', '-', ' ' or 0
	alt       bool
	width     int
	grouping  byte // ',' or '_' or 0
	precision int  // -1 when absent
	typ       byte // 0 when absent
}

func parseFormatSpec(spec string) (formatSpec, error) {
	fs := formatSpec{fill: ' ', precision: -1}
	isAlign := func(c byte) bool { return c == '<' || c == '>' || c == '^' || c == '=' }
	if r, sz := utf8.DecodeRuneInString(spec); len(spec) > sz && isAlign(spec[sz]) {
		fs.fill, fs.align, spec = r, spec[sz], spec[sz+1:]
	} else if spec != "" && isAlign(spec[0]) {
		fs.align, spec = spec[0], spec[1:]
	}
	if spec != "" && (spec[0] == '+' || spec[0] == '-' || spec[0] == ' ') {
		fs.sign, spec = spec[0], spec[1:]
	}
	if strings.HasPrefix(spec, "#") {
		fs.alt, spec = true, spec[1:]
	}
	if strings.HasPrefix(spec, "0") {
		if fs.align == 0 {
			fs.fill, fs.align = '0', '='
		}
		spec = spec[1:]
	}
	n := 0
	for n < len(spec) && spec[n] >= '0' && spec[n] <= '9' {
		n++
	}
	if n > 0 {
		fs.width, _ = strconv.Atoi(spec[:n])
		spec = spec[n:]
	}
	if spec != "" && (spec[0] == ',' || spec[0] == '_') {
		fs.grouping, spec = spec[0], spec[1:]
	}
	if strings.HasPrefix(spec, ".") {
		n = 1
		for n < len(spec) && spec[n] >= '0' && spec[n] <= '9' {
			n++
		}
		if n == 1 {
			return fs, errors.New("format specifier missing precision")
		}
		fs.precision, _ = strconv.Atoi(spec[1:n])
		spec = spec[n:]
	}
	if len(spec) == 1 {
		fs.typ = spec[0]
	} else if spec != "" {
		return fs, fmt.Errorf("invalid format specifier")
	}
	if fs.width > 10000 || fs.precision > 1000 {
		return fs, errors.New("format width or precision too large")
	}
	return fs, nil
}

// pyFormat is Python's format(v, spec) for str, int, float, bool and None.
func pyFormat(v value, spec string) (string, error) {
	if spec == "" {
		return toStr(v), nil
	}
	fs, err := parseFormatSpec(spec)
	if err != nil {
		return "", err
	}
	var body, sign string
	numeric := true
	switch x := v.(type) {
	case string:
		if fs.typ != 0 && fs.typ != 's' {
			return "", fmt.Errorf("Unknown format code '%c' for object of type 'str'", fs.typ)
		}
		numeric = false
		body = x
		if fs.precision >= 0 && utf8.RuneCountInString(body) > fs.precision {
			body = string([]rune(body)[:fs.precision])
		}
	case bool, int64:
		n, _ := toNumber(x)
		switch fs.typ {
		case 0, 'd', 'n':
			body = groupDigits(strconv.FormatInt(absInt(n.i), 10), fs.grouping)
		case 'x', 'X', 'o', 'b':
			base := map[byte]int{'x': 16, 'X': 16, 'o': 8, 'b': 2}[fs.typ]
			body = strconv.FormatInt(absInt(n.i), base)
			if fs.typ == 'X' {
				body = strings.ToUpper(body)
			}
			if fs.alt {
				body = "0" + string(fs.typ) + body
			}
		case 'c':
			body = string(rune(n.i))
		case 'e', 'E', 'f', 'F', 'g', 'G', '%':
			return pyFormat(n.float(), spec)
		default:
			return "", fmt.Errorf("Unknown format code '%c' for object of type 'int'", fs.typ)
		}
		if n.i < 0 {
			sign = "-"
		}
	case float64:
		if math.Signbit(x) && !math.IsNaN(x) {
			sign = "-"
			x = -x
		}
		prec := fs.precision
		switch fs.typ {
		case 0:
			if prec < 0 {
				body = pyFloatRepr(x)
			} else {
				// Like 'g', but fixed-point keeps one digit after the point.
				body = strconv.FormatFloat(x, 'g', max(prec, 1), 64)
				if !strings.ContainsAny(body, ".eIN") {
					body += ".0"
				}
			}
		case 'f', 'F', '%':
			if prec < 0 {
				prec = 6
			}
			if fs.typ == '%' {
				x *= 100
			}
			body = strconv.FormatFloat(x, 'f', prec, 64)
			if fs.typ == '%' {
				body += "%"
			}
		case 'e', 'E':
			if prec < 0 {
				prec = 6
			}
			body = strconv.FormatFloat(x, 'e', prec, 64) // Go and Python both write e+04
		case 'g', 'G':
			if prec < 0 {
				prec = 6
			}
			body = strconv.FormatFloat(x, 'g', max(prec, 1), 64)
		default:
			return "", fmt.Errorf("Unknown format code '%c' for object of type 'float'", fs.typ)
		}
		if fs.typ == 'E' || fs.typ == 'G' || fs.typ == 'F' {
			body = strings.ToUpper(body)
		}
		if fs.grouping != 0 {
			intPart, frac, _ := strings.Cut(body, ".")
			if frac != "" || strings.Contains(body, ".") {
				frac = "." + frac
			}
			body = groupDigits(intPart, fs.grouping) + frac
		}
	default:
		return "", fmt.Errorf("unsupported format string passed to %s.__format__", typeName(v))
	}
	if numeric && sign == "" && (fs.sign == '+' || fs.sign == ' ') {
		sign = string(fs.sign)
	}
	align := fs.align
	if align == 0 {
		align = '<'
		if numeric {
			align = '>'
		}
	}
	pad := fs.width - utf8.RuneCountInString(sign+body)
	if pad <= 0 {
		return sign + body, nil
	}
	fill := strings.Repeat(string(fs.fill), pad)
	switch align {
	case '<':
		return sign + body + fill, nil
	case '>':
		return fill + sign + body, nil
	case '=':
		return sign + fill + body, nil
	}
	left := strings.Repeat(string(fs.fill), pad/2)
	right := strings.Repeat(string(fs.fill), pad-pad/2)
	return left + sign + body + right, nil
}

func absInt(i int64) int64 {
	if i < 0 {
		return -i
	}
	return i
}

func groupDigits(digits string, sep byte) string {
	if sep == 0 || len(digits) <= 3 {
		return digits
	}
	var b strings.Builder
	lead := len(digits) % 3
	if lead > 0 {
		b.WriteString(digits[:lead])
	}
	for i := lead; i < len(digits); i += 3 {
		if b.Len() > 0 {
			b.WriteByte(sep)
		}
		b.WriteString(digits[i : i+3])
	}
	return b.String()
}
