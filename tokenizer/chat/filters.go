package chat

import (
	"errors"
	"fmt"
	"html"
	"math"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

type filterFunc func(ev *evaluator, v value, args []value, kw *dictVal) (value, error)

// filters are Jinja2's built-in filters that chat templates use, with
// transformers' tojson replacing Jinja2's HTML-safe one.
var filters map[string]filterFunc

func init() {
	filters = map[string]filterFunc{
		"abs":        fAbs,
		"attr":       fAttr,
		"capitalize": strFilter(pyCapitalize),
		"center":     fCenter,
		"count":      fLength,
		"d":          fDefault,
		"default":    fDefault,
		"dictsort":   fDictsort,
		"e":          fEscape,
		"escape":     fEscape,
		"first":      fFirst,
		"float":      fFloat,
		"format":     fFormat,
		"indent":     fIndent,
		"int":        fInt,
		"items":      fItems,
		"join":       fJoin,
		"last":       fLast,
		"length":     fLength,
		"list":       fList,
		"lower":      strFilter(pyLower),
		"map":        fMap,
		"max":        fMinMax(1),
		"min":        fMinMax(-1),
		"reject":     fSelect(false, false),
		"rejectattr": fSelect(false, true),
		"replace":    fReplace,
		"reverse":    fReverse,
		"round":      fRound,
		"safe":       func(_ *evaluator, v value, _ []value, _ *dictVal) (value, error) { return v, nil },
		"select":     fSelect(true, false),
		"selectattr": fSelect(true, true),
		"sort":       fSort,
		"string":     func(_ *evaluator, v value, _ []value, _ *dictVal) (value, error) { return toStr(v), nil },
		"sum":        fSum,
		"title":      strFilter(jinjaTitle),
		"tojson":     fTojson,
		"trim":       fTrim,
		"unique":     fUnique,
		"upper":      strFilter(pyUpper),
		"wordcount":  fWordcount,
	}
}

func (ev *evaluator) applyFilter(f *filterExpr, v value, sc *scope) (value, error) {
	fn, ok := filters[f.name]
	if !ok {
		return nil, errorf(f.line, "no filter named '%s'", f.name)
	}
	args, kw, err := ev.evalArgs(f.args, f.kwargs, sc)
	if err != nil {
		return nil, err
	}
	r, err := fn(ev, v, args, kw)
	return r, withLineIf(err, f.line)
}

func strFilter(f func(string) string) filterFunc {
	return func(_ *evaluator, v value, _ []value, _ *dictVal) (value, error) { return f(toStr(v)), nil }
}

func fAbs(_ *evaluator, v value, _ []value, _ *dictVal) (value, error) {
	switch n := v.(type) {
	case int64:
		if n < 0 {
			return -n, nil
		}
		return n, nil
	case float64:
		return math.Abs(n), nil
	case bool:
		if n {
			return int64(1), nil
		}
		return int64(0), nil
	}
	return nil, fmt.Errorf("bad operand type for abs(): '%s'", typeName(v))
}

func fAttr(_ *evaluator, v value, args []value, _ *dictVal) (value, error) {
	if len(args) != 1 {
		return nil, errors.New("attr() expects one argument")
	}
	name := toStr(args[0])
	switch o := v.(type) {
	case *namespace:
		if x, ok := o.attrs.get(name); ok {
			return x, nil
		}
	case *loopInfo:
		if x, ok := o.attr(name); ok {
			return x, nil
		}
	}
	if m, ok := method(v, name); ok {
		return m, nil
	}
	return undefined{hint: fmt.Sprintf("'%s object' has no attribute '%s'", typeName(v), name)}, nil
}

func fCenter(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	a, err := bindArgs("center", args, kw, "width")
	if err != nil {
		return nil, err
	}
	w, err := argInt("center", orDefault(a[0], int64(80)))
	if err != nil {
		return nil, err
	}
	s := toStr(v)
	n := utf8.RuneCountInString(s)
	if w <= int64(n) || w > maxOutput {
		return s, nil
	}
	// Python puts the extra space on the right unless the width is odd and
	// the string length even... it uses left = pad/2 + (pad & width & 1).
	pad := int(w) - n
	left := pad/2 + (pad & int(w) & 1)
	return strings.Repeat(" ", left) + s + strings.Repeat(" ", pad-left), nil
}

func fDefault(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	a, err := bindArgs("default", args, kw, "default_value", "boolean")
	if err != nil {
		return nil, err
	}
	def := orDefault(a[0], "")
	if _, ok := v.(undefined); ok {
		return def, nil
	}
	if truthy(orDefault(a[1], false)) && !truthy(v) {
		return def, nil
	}
	return v, nil
}

func fEscape(_ *evaluator, v value, _ []value, _ *dictVal) (value, error) {
	// Same five escapes as markupsafe: & < > " '.
	return html.EscapeString(toStr(v)), nil
}

func fFloat(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	a, err := bindArgs("float", args, kw, "default")
	if err != nil {
		return nil, err
	}
	def := orDefault(a[0], 0.0)
	switch x := v.(type) {
	case bool, int64, float64:
		n, _ := toNumber(x)
		return n.float(), nil
	case string:
		f, err := strconv.ParseFloat(strings.TrimFunc(strings.ReplaceAll(x, "_", ""), isPySpace), 64)
		if err != nil {
			return def, nil
		}
		return f, nil
	}
	return def, nil
}

func fInt(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	a, err := bindArgs("int", args, kw, "default", "base")
	if err != nil {
		return nil, err
	}
	def := orDefault(a[0], int64(0))
	base, err := argInt("int", orDefault(a[1], int64(10)))
	if err != nil {
		return nil, err
	}
	switch x := v.(type) {
	case bool, int64:
		n, _ := toNumber(x)
		return n.i, nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return def, nil
		}
		return int64(x), nil
	case string:
		s := strings.TrimFunc(x, isPySpace)
		if i, ok := pyParseInt(s, base); ok {
			return i, nil
		}
		if base == 10 {
			if f, err := strconv.ParseFloat(s, 64); err == nil && !math.IsInf(f, 0) && !math.IsNaN(f) {
				return int64(f), nil
			}
		}
	}
	return def, nil
}

func fFormat(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	if len(args) > 0 && len(kw.keys) > 0 {
		return nil, errors.New("can't handle positional and keyword arguments at the same time")
	}
	if len(kw.keys) > 0 {
		return percentFormat(toStr(v), kw)
	}
	return percentFormat(toStr(v), &listVal{items: args, tuple: true})
}

// fIndent follows Jinja2 3.1: the first line is left alone unless first is
// set, and blank lines stay empty unless blank is set.
func fIndent(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	a, err := bindArgs("indent", args, kw, "width", "first", "blank")
	if err != nil {
		return nil, err
	}
	var ind string
	switch w := orDefault(a[0], int64(4)).(type) {
	case string:
		ind = w
	default:
		n, err := argInt("indent", w)
		if err != nil {
			return nil, err
		}
		if n > 1000 {
			return nil, errors.New("indent width too large")
		}
		ind = strings.Repeat(" ", int(max(n, 0)))
	}
	s := toStr(v) + "\n"
	lines := pySplitlines(s, false)
	var rv string
	if truthy(orDefault(a[2], false)) {
		rv = strings.Join(lines, "\n"+ind)
	} else {
		rv = lines[0]
		if len(lines) > 1 {
			rest := make([]string, len(lines)-1)
			for i, l := range lines[1:] {
				if l != "" {
					l = ind + l
				}
				rest[i] = l
			}
			rv += "\n" + strings.Join(rest, "\n")
		}
	}
	if truthy(orDefault(a[1], false)) {
		rv = ind + rv
	}
	return rv, checkLen(len(rv))
}

func fReplace(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	a, err := bindArgs("replace", args, kw, "old", "new", "count")
	if err != nil {
		return nil, err
	}
	m := strMethod(toStr(v), "replace")
	rest := []value{toStr(orDefault(a[0], "")), toStr(orDefault(a[1], ""))}
	if c := orDefault(a[2], nil); c != nil {
		rest = append(rest, c)
	}
	return m(rest, newDict())
}

func fRound(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	a, err := bindArgs("round", args, kw, "precision", "method")
	if err != nil {
		return nil, err
	}
	prec, err := argInt("round", orDefault(a[0], int64(0)))
	if err != nil {
		return nil, err
	}
	n, ok := toNumber(v)
	if !ok {
		return nil, fmt.Errorf("type %s doesn't define __round__ method", typeName(v))
	}
	f := n.float()
	scale := math.Pow(10, float64(prec))
	switch orDefault(a[1], "common") {
	case "common":
		// Python's round(): correctly rounded, ties to even. FormatFloat
		// rounds the exact binary value the same way.
		if prec >= 0 && prec < 300 {
			r, _ := strconv.ParseFloat(strconv.FormatFloat(f, 'f', int(prec), 64), 64)
			if n.isInt {
				return n.i, nil
			}
			return r, nil
		}
		return math.RoundToEven(f*scale) / scale, nil
	case "ceil":
		return math.Ceil(f*scale) / scale, nil
	case "floor":
		return math.Floor(f*scale) / scale, nil
	}
	return nil, errors.New("method must be common, ceil or floor")
}

func fTojson(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	o, err := tojsonOptions(args, kw)
	if err != nil {
		return nil, err
	}
	return pyJSONDumps(v, o)
}

func fTrim(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	f, err := stripSet("trim", args, kw)
	if err != nil {
		return nil, err
	}
	return strings.TrimFunc(toStr(v), f), nil
}

var wordRe = regexp.MustCompile(`[\p{L}\p{N}_]+`)

func fWordcount(_ *evaluator, v value, _ []value, _ *dictVal) (value, error) {
	return int64(len(wordRe.FindAllStringIndex(toStr(v), -1))), nil
}

var titleSplitRe = regexp.MustCompile(`[-\s({\[<]+`)

// jinjaTitle is Jinja2's title filter, which (unlike str.title) only starts
// words after whitespace, dashes and opening brackets.
func jinjaTitle(s string) string {
	var b strings.Builder
	last := 0
	emit := func(word string) {
		if word == "" {
			return
		}
		r, sz := utf8.DecodeRuneInString(word)
		b.WriteString(pyUpper(string(r)))
		b.WriteString(pyLower(word[sz:]))
	}
	for _, m := range titleSplitRe.FindAllStringIndex(s, -1) {
		emit(s[last:m[0]])
		b.WriteString(s[m[0]:m[1]])
		last = m[1]
	}
	emit(s[last:])
	return b.String()
}

// pyParseInt is Python's int(s, base): an optional sign, a 0x/0o/0b prefix
// matching the base (any of them for base 0), and "_" between digits.
func pyParseInt(s string, base int64) (int64, bool) {
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if len(s) > 2 && s[0] == '0' {
		prefixes := map[byte]int64{'x': 16, 'X': 16, 'o': 8, 'O': 8, 'b': 2, 'B': 2}
		if b, ok := prefixes[s[1]]; ok && (base == b || base == 0) {
			s, base = s[2:], b
		}
	}
	if base == 0 {
		base = 10
	}
	if base < 2 || base > 36 || strings.HasPrefix(s, "_") || strings.HasSuffix(s, "_") || strings.Contains(s, "__") {
		return 0, false
	}
	i, err := strconv.ParseInt(strings.ReplaceAll(s, "_", ""), int(base), 64)
	if err != nil {
		return 0, false
	}
	if neg {
		i = -i
	}
	return i, true
}
