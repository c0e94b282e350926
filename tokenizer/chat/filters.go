package chat

import (
	"errors"
	"fmt"
	"html"
	"math"
	"regexp"
	"sort"
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

func fDictsort(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	a, err := bindArgs("dictsort", args, kw, "case_sensitive", "by", "reverse")
	if err != nil {
		return nil, err
	}
	d, ok := v.(*dictVal)
	if !ok {
		return nil, errors.New("you can only sort by either \"key\" or \"value\" of a dict")
	}
	pos := 0
	switch orDefault(a[1], "key") {
	case "key":
	case "value":
		pos = 1
	default:
		return nil, errors.New("you can only sort by either \"key\" or \"value\"")
	}
	items := dictItems(d).items
	cs := truthy(orDefault(a[0], false))
	err = sortValues(items, truthy(orDefault(a[2], false)), func(x value) (value, error) {
		return sortKey(x.(*listVal).items[pos], cs), nil
	})
	return newList(items), err
}

func fEscape(_ *evaluator, v value, _ []value, _ *dictVal) (value, error) {
	// Same five escapes as markupsafe: & < > " '.
	return html.EscapeString(toStr(v)), nil
}

func fFirst(_ *evaluator, v value, _ []value, _ *dictVal) (value, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return undefined{hint: "No first item, sequence was empty."}, nil
	}
	return items[0], nil
}

func fLast(_ *evaluator, v value, _ []value, _ *dictVal) (value, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return undefined{hint: "No last item, sequence was empty."}, nil
	}
	return items[len(items)-1], nil
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

func fItems(_ *evaluator, v value, _ []value, _ *dictVal) (value, error) {
	switch d := v.(type) {
	case undefined:
		return newList(nil), nil
	case *dictVal:
		return dictItems(d), nil
	}
	return nil, fmt.Errorf("can only get item pairs from a mapping")
}

func fJoin(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	a, err := bindArgs("join", args, kw, "d", "attribute")
	if err != nil {
		return nil, err
	}
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	if attr := orDefault(a[1], nil); attr != nil {
		if items, err = mapAttr(items, attr, missing); err != nil {
			return nil, err
		}
	}
	sep := toStr(orDefault(a[0], ""))
	parts := make([]string, len(items))
	total := 0
	for i, it := range items {
		parts[i] = toStr(it)
		total += len(parts[i]) + len(sep)
	}
	if err := checkLen(total); err != nil {
		return nil, err
	}
	return strings.Join(parts, sep), nil
}

func fLength(_ *evaluator, v value, _ []value, _ *dictVal) (value, error) {
	switch x := v.(type) {
	case string:
		return int64(utf8.RuneCountInString(x)), nil
	case *listVal:
		return int64(len(x.items)), nil
	case *dictVal:
		return int64(len(x.keys)), nil
	case undefined:
		return int64(0), nil
	}
	return nil, fmt.Errorf("object of type '%s' has no len()", typeName(v))
}

func fList(_ *evaluator, v value, _ []value, _ *dictVal) (value, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	return newList(append([]value{}, items...)), nil
}

// attrGetter resolves Jinja2's attribute argument: dotted paths, with
// integer parts used as indexes.
func attrGetter(attr value) func(value) (value, error) {
	s, ok := attr.(string)
	if !ok {
		return func(x value) (value, error) { return getItem(x, attr) }
	}
	parts := strings.Split(s, ".")
	return func(x value) (value, error) {
		var err error
		for _, p := range parts {
			var key value = p
			if i, e := strconv.ParseInt(p, 10, 64); e == nil {
				key = i
			}
			if x, err = getItem(x, key); err != nil {
				return nil, err
			}
		}
		return x, nil
	}
}

func mapAttr(items []value, attr, def value) ([]value, error) {
	get := attrGetter(attr)
	out := make([]value, len(items))
	for i, it := range items {
		x, err := get(it)
		if err != nil {
			return nil, err
		}
		if _, ok := x.(undefined); ok && !isMissing(def) {
			x = def
		}
		out[i] = x
	}
	return out, nil
}

func fMap(ev *evaluator, v value, args []value, kw *dictVal) (value, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	if attr, ok := kw.get("attribute"); ok {
		def, hasDef := kw.get("default")
		if !hasDef {
			def = missing
		}
		out, err := mapAttr(items, attr, def)
		return newList(out), err
	}
	if len(args) == 0 {
		return nil, errors.New("map requires a filter argument")
	}
	name, ok := args[0].(string)
	if !ok {
		return nil, errors.New("map filter name must be a string")
	}
	fn, ok := filters[name]
	if !ok {
		return nil, fmt.Errorf("no filter named '%s'", name)
	}
	out := make([]value, len(items))
	for i, it := range items {
		if out[i], err = fn(ev, it, args[1:], kw); err != nil {
			return nil, err
		}
	}
	return newList(out), nil
}

func fMinMax(sign int) filterFunc {
	return func(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
		a, err := bindArgs("min/max", args, kw, "case_sensitive", "attribute")
		if err != nil {
			return nil, err
		}
		items, err := iterate(v)
		if err != nil {
			return nil, err
		}
		if len(items) == 0 {
			return undefined{hint: "No aggregated item, sequence was empty."}, nil
		}
		cs := truthy(orDefault(a[0], false))
		get := func(x value) (value, error) { return x, nil }
		if attr := orDefault(a[1], nil); attr != nil {
			get = attrGetter(attr)
		}
		best := items[0]
		bk, err := get(best)
		if err != nil {
			return nil, err
		}
		for _, it := range items[1:] {
			k, err := get(it)
			if err != nil {
				return nil, err
			}
			c, err := compare(sortKey(k, cs), sortKey(bk, cs))
			if err != nil {
				return nil, err
			}
			if c*sign > 0 {
				best, bk = it, k
			}
		}
		return best, nil
	}
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

func fReverse(_ *evaluator, v value, _ []value, _ *dictVal) (value, error) {
	if s, ok := v.(string); ok {
		rs := []rune(s)
		for i, j := 0, len(rs)-1; i < j; i, j = i+1, j-1 {
			rs[i], rs[j] = rs[j], rs[i]
		}
		return string(rs), nil
	}
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	out := make([]value, len(items))
	for i, it := range items {
		out[len(items)-1-i] = it
	}
	return newList(out), nil
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

// selectTests resolves the test a select-like filter applies, with its
// extra arguments.
func fSelect(keep, byAttr bool) filterFunc {
	return func(ev *evaluator, v value, args []value, kw *dictVal) (value, error) {
		items, err := iterate(v)
		if err != nil {
			return nil, err
		}
		get := func(x value) (value, error) { return x, nil }
		if byAttr {
			if len(args) == 0 {
				return nil, errors.New("missing parameter for attribute name")
			}
			get = attrGetter(args[0])
			args = args[1:]
		}
		test := func(x value) (bool, error) { return truthy(x), nil }
		if len(args) > 0 {
			name, ok := args[0].(string)
			if !ok {
				return nil, errors.New("test name must be a string")
			}
			fn, ok := tests[name]
			if !ok {
				return nil, fmt.Errorf("no test named '%s'", name)
			}
			targs := args[1:]
			test = func(x value) (bool, error) { return fn(x, targs) }
		}
		var out []value
		for _, it := range items {
			x, err := get(it)
			if err != nil {
				return nil, err
			}
			ok, err := test(x)
			if err != nil {
				return nil, err
			}
			if ok == keep {
				out = append(out, it)
			}
		}
		return newList(out), nil
	}
}

// sortKey lowercases strings for Jinja2's case-insensitive comparisons.
func sortKey(v value, caseSensitive bool) value {
	if s, ok := v.(string); ok && !caseSensitive {
		return pyLower(s)
	}
	return v
}

func sortValues(items []value, reverse bool, key func(value) (value, error)) error {
	keys := make([]value, len(items))
	for i, it := range items {
		k, err := key(it)
		if err != nil {
			return err
		}
		keys[i] = k
	}
	idx := make([]int, len(items))
	for i := range idx {
		idx[i] = i
	}
	var cmpErr error
	sort.SliceStable(idx, func(i, j int) bool {
		c, err := compare(keys[idx[i]], keys[idx[j]])
		if err != nil && cmpErr == nil {
			cmpErr = err
		}
		if reverse {
			return c > 0
		}
		return c < 0
	})
	sorted := make([]value, len(items))
	for i, j := range idx {
		sorted[i] = items[j]
	}
	copy(items, sorted)
	return cmpErr
}

func fSort(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	a, err := bindArgs("sort", args, kw, "reverse", "case_sensitive", "attribute")
	if err != nil {
		return nil, err
	}
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	items = append([]value{}, items...)
	cs := truthy(orDefault(a[1], false))
	get := func(x value) (value, error) { return x, nil }
	if attr := orDefault(a[2], nil); attr != nil {
		get = attrGetter(attr)
	}
	err = sortValues(items, truthy(orDefault(a[0], false)), func(x value) (value, error) {
		k, err := get(x)
		return sortKey(k, cs), err
	})
	return newList(items), err
}

func fSum(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	a, err := bindArgs("sum", args, kw, "attribute", "start")
	if err != nil {
		return nil, err
	}
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	if attr := orDefault(a[0], nil); attr != nil {
		if items, err = mapAttr(items, attr, missing); err != nil {
			return nil, err
		}
	}
	total := orDefault(a[1], int64(0))
	for _, it := range items {
		if total, err = binaryOp("+", total, it); err != nil {
			return nil, err
		}
	}
	return total, nil
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

func fUnique(_ *evaluator, v value, args []value, kw *dictVal) (value, error) {
	a, err := bindArgs("unique", args, kw, "case_sensitive", "attribute")
	if err != nil {
		return nil, err
	}
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	cs := truthy(orDefault(a[0], false))
	get := func(x value) (value, error) { return x, nil }
	if attr := orDefault(a[1], nil); attr != nil {
		get = attrGetter(attr)
	}
	seen := newDict()
	var out []value
	for _, it := range items {
		k, err := get(it)
		if err != nil {
			return nil, err
		}
		k = sortKey(k, cs)
		if _, ok := seen.get(k); ok {
			continue
		}
		if err := seen.set(k, true); err != nil {
			return nil, err
		}
		out = append(out, it)
	}
	return newList(out), nil
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
