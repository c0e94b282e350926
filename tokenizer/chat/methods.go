package chat

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// method returns the bound Python method obj.name for the str, dict and
// list methods chat templates call. Mutating methods (append, update, pop,
// ...) are refused like in ImmutableSandboxedEnvironment.
func method(obj value, name string) (value, bool) {
	var fn func(args []value, kw *dictVal) (value, error)
	switch o := obj.(type) {
	case string:
		fn = strMethod(o, name)
	case *dictVal:
		fn = dictMethod(o, name)
	case *listVal:
		fn = listMethod(o, name)
	}
	if fn == nil {
		return nil, false
	}
	return &callable{name: typeName(obj) + "." + name, fn: func(_ *evaluator, args []value, kw *dictVal) (value, error) {
		return fn(args, kw)
	}}, true
}

func unsafeMethod(obj value, name string) func([]value, *dictVal) (value, error) {
	return func([]value, *dictVal) (value, error) {
		return nil, fmt.Errorf("access to attribute '%s' of '%s' object is unsafe", name, typeName(obj))
	}
}

func dictMethod(d *dictVal, name string) func([]value, *dictVal) (value, error) {
	switch name {
	case "items":
		return func([]value, *dictVal) (value, error) { return dictItems(d), nil }
	case "keys":
		return func([]value, *dictVal) (value, error) { return newList(append([]value{}, d.keys...)), nil }
	case "values":
		return func([]value, *dictVal) (value, error) { return newList(append([]value{}, d.vals...)), nil }
	case "get":
		return func(args []value, kw *dictVal) (value, error) {
			a, err := bindArgs("get", args, nil, "key", "default")
			if err != nil || isMissing(a[0]) {
				return nil, errors.New("get() expects a key and an optional default")
			}
			if v, ok := d.get(a[0]); ok {
				return v, nil
			}
			return orDefault(a[1], nil), nil
		}
	case "copy":
		return func([]value, *dictVal) (value, error) {
			c := newDict()
			for i, k := range d.keys {
				_ = c.set(k, d.vals[i])
			}
			return c, nil
		}
	case "update", "pop", "popitem", "setdefault", "clear":
		return unsafeMethod(d, name)
	}
	return nil
}

func dictItems(d *dictVal) *listVal {
	items := make([]value, len(d.keys))
	for i, k := range d.keys {
		items[i] = &listVal{items: []value{k, d.vals[i]}, tuple: true}
	}
	return newList(items)
}

func listMethod(l *listVal, name string) func([]value, *dictVal) (value, error) {
	switch name {
	case "index":
		return func(args []value, _ *dictVal) (value, error) {
			if len(args) < 1 {
				return nil, errors.New("index() takes at least 1 argument")
			}
			for i, it := range l.items {
				if equal(it, args[0]) {
					return int64(i), nil
				}
			}
			return nil, fmt.Errorf("%s is not in list", repr(args[0]))
		}
	case "count":
		return func(args []value, _ *dictVal) (value, error) {
			if len(args) != 1 {
				return nil, errors.New("count() takes exactly one argument")
			}
			n := int64(0)
			for _, it := range l.items {
				if equal(it, args[0]) {
					n++
				}
			}
			return n, nil
		}
	case "copy":
		if !l.tuple {
			return func([]value, *dictVal) (value, error) { return newList(append([]value{}, l.items...)), nil }
		}
	case "append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse":
		if !l.tuple {
			return unsafeMethod(l, name)
		}
	}
	return nil
}

// stripSet returns the predicate for str.strip's chars argument (None or
// missing means whitespace).
func stripSet(fname string, args []value, kw *dictVal) (func(rune) bool, error) {
	a, err := bindArgs(fname, args, kw, "chars")
	if err != nil {
		return nil, err
	}
	if isMissing(a[0]) || a[0] == nil {
		return isPySpace, nil
	}
	chars, err := argStr(fname, a[0])
	if err != nil {
		return nil, err
	}
	return func(r rune) bool { return strings.ContainsRune(chars, r) }, nil
}

func strMethod(s, name string) func([]value, *dictVal) (value, error) {
	noArgs := func(f func() value) func([]value, *dictVal) (value, error) {
		return func(args []value, kw *dictVal) (value, error) {
			if len(args) > 0 || len(kw.keys) > 0 {
				return nil, fmt.Errorf("str.%s() takes no arguments", name)
			}
			return f(), nil
		}
	}
	switch name {
	case "strip", "lstrip", "rstrip":
		return func(args []value, kw *dictVal) (value, error) {
			f, err := stripSet(name, args, kw)
			if err != nil {
				return nil, err
			}
			switch name {
			case "lstrip":
				return strings.TrimLeftFunc(s, f), nil
			case "rstrip":
				return strings.TrimRightFunc(s, f), nil
			}
			return strings.TrimFunc(s, f), nil
		}
	case "startswith", "endswith":
		return func(args []value, kw *dictVal) (value, error) {
			a, err := bindArgs(name, args, kw, "prefix", "start", "end")
			if err != nil {
				return nil, err
			}
			sub, err := sliceValue(s, orDefault(a[1], nil), orDefault(a[2], nil), nil)
			if err != nil {
				return nil, err
			}
			target := sub.(string)
			var cands []value
			switch p := a[0].(type) {
			case string:
				cands = []value{p}
			case *listVal:
				if !p.tuple {
					return nil, fmt.Errorf("%s first arg must be str or a tuple of str, not list", name)
				}
				cands = p.items
			default:
				return nil, fmt.Errorf("%s first arg must be str or a tuple of str, not %s", name, typeName(a[0]))
			}
			for _, c := range cands {
				cs, err := argStr(name, c)
				if err != nil {
					return nil, err
				}
				if (name == "startswith" && strings.HasPrefix(target, cs)) || (name == "endswith" && strings.HasSuffix(target, cs)) {
					return true, nil
				}
			}
			return false, nil
		}
	case "split", "rsplit":
		return func(args []value, kw *dictVal) (value, error) {
			a, err := bindArgs(name, args, kw, "sep", "maxsplit")
			if err != nil {
				return nil, err
			}
			max := int64(-1)
			if !isMissing(a[1]) {
				if max, err = argInt(name, a[1]); err != nil {
					return nil, err
				}
			}
			sep := orDefault(a[0], nil)
			if sep == nil {
				return newList(strsToValues(splitWhitespace(s, int(max), name == "rsplit"))), nil
			}
			sp, err := argStr(name, sep)
			if err != nil {
				return nil, err
			}
			if sp == "" {
				return nil, errors.New("empty separator")
			}
			var parts []string
			switch {
			case max < 0:
				parts = strings.Split(s, sp)
			case name == "split":
				parts = strings.SplitN(s, sp, int(max)+1)
			default:
				parts = rsplitN(s, sp, int(max))
			}
			return newList(strsToValues(parts)), nil
		}
	case "splitlines":
		return func(args []value, kw *dictVal) (value, error) {
			a, err := bindArgs(name, args, kw, "keepends")
			if err != nil {
				return nil, err
			}
			return newList(strsToValues(pySplitlines(s, truthy(orDefault(a[0], false))))), nil
		}
	case "upper":
		return noArgs(func() value { return pyUpper(s) })
	case "lower":
		return noArgs(func() value { return pyLower(s) })
	case "title":
		return noArgs(func() value { return pyTitle(s) })
	case "capitalize":
		return noArgs(func() value { return pyCapitalize(s) })
	case "swapcase":
		return noArgs(func() value {
			return strings.Map(func(r rune) rune {
				if unicode.IsUpper(r) {
					return unicode.ToLower(r)
				}
				return unicode.ToUpper(r)
			}, s)
		})
	case "replace":
		return func(args []value, kw *dictVal) (value, error) {
			a, err := bindArgs(name, args, kw, "old", "new", "count")
			if err != nil {
				return nil, err
			}
			old, err := argStr(name, a[0])
			if err != nil {
				return nil, err
			}
			nw, err := argStr(name, a[1])
			if err != nil {
				return nil, err
			}
			n := int64(-1)
			if !isMissing(a[2]) {
				if n, err = argInt(name, a[2]); err != nil {
					return nil, err
				}
			}
			if cnt := strings.Count(s, old); len(nw) > len(old) && cnt > 0 && len(s)+cnt*(len(nw)-len(old)) > maxOutput {
				return nil, errors.New("value too large")
			}
			return strings.Replace(s, old, nw, int(n)), nil
		}
	case "find", "rfind", "index", "rindex", "count":
		return func(args []value, kw *dictVal) (value, error) {
			a, err := bindArgs(name, args, kw, "sub", "start", "end")
			if err != nil {
				return nil, err
			}
			sub, err := argStr(name, a[0])
			if err != nil {
				return nil, err
			}
			rs := []rune(s)
			start, _ := sliceBound(orDefault(a[1], nil), 0, len(rs))
			end, _ := sliceBound(orDefault(a[2], nil), len(rs), len(rs))
			if start > end {
				start = end
			}
			hay := string(rs[start:end])
			if name == "count" {
				return int64(strings.Count(hay, sub)), nil
			}
			var i int
			if name == "find" || name == "index" {
				i = strings.Index(hay, sub)
			} else {
				i = strings.LastIndex(hay, sub)
			}
			if i < 0 {
				if name == "index" || name == "rindex" {
					return nil, errors.New("substring not found")
				}
				return int64(-1), nil
			}
			return int64(start + utf8.RuneCountInString(hay[:i])), nil
		}
	case "join":
		return func(args []value, kw *dictVal) (value, error) {
			if len(args) != 1 {
				return nil, errors.New("join() takes exactly one argument")
			}
			items, err := iterate(args[0])
			if err != nil {
				return nil, err
			}
			parts := make([]string, len(items))
			total := 0
			for i, it := range items {
				str, ok := it.(string)
				if !ok {
					return nil, fmt.Errorf("sequence item %d: expected str instance, %s found", i, typeName(it))
				}
				parts[i] = str
				total += len(str) + len(s)
			}
			if err := checkLen(total); err != nil {
				return nil, err
			}
			return strings.Join(parts, s), nil
		}
	case "format":
		return func(args []value, kw *dictVal) (value, error) { return strFormat(s, args, kw) }
	case "isdigit", "isdecimal", "isnumeric":
		return noArgs(func() value {
			return s != "" && strings.IndexFunc(s, func(r rune) bool { return !unicode.IsDigit(r) }) < 0
		})
	case "isalpha":
		return noArgs(func() value {
			return s != "" && strings.IndexFunc(s, func(r rune) bool { return !unicode.IsLetter(r) }) < 0
		})
	case "isalnum":
		return noArgs(func() value {
			return s != "" && strings.IndexFunc(s, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) }) < 0
		})
	case "isspace":
		return noArgs(func() value { return s != "" && strings.IndexFunc(s, func(r rune) bool { return !isPySpace(r) }) < 0 })
	case "isupper":
		return noArgs(func() value { return pyIsCase(s, unicode.IsLower) })
	case "islower":
		return noArgs(func() value { return pyIsCase(s, unicode.IsUpper) })
	case "removeprefix", "removesuffix":
		return func(args []value, _ *dictVal) (value, error) {
			if len(args) != 1 {
				return nil, fmt.Errorf("%s() takes exactly one argument", name)
			}
			a, err := argStr(name, args[0])
			if err != nil {
				return nil, err
			}
			if name == "removeprefix" {
				return strings.TrimPrefix(s, a), nil
			}
			return strings.TrimSuffix(s, a), nil
		}
	}
	return nil
}

// sliceBound resolves a Python slice index against length n.
func sliceBound(v value, def, n int) (int, error) {
	if v == nil {
		return def, nil
	}
	num, ok := toNumber(v)
	if !ok || !num.isInt {
		return 0, errors.New("slice indices must be integers or None")
	}
	i := num.i
	if i < 0 {
		i += int64(n)
		if i < 0 {
			i = 0
		}
	}
	if i > int64(n) {
		i = int64(n)
	}
	return int(i), nil
}

func strsToValues(ss []string) []value {
	out := make([]value, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// splitWhitespace is str.split() / str.rsplit() without a separator: runs of
// whitespace separate, and empty strings are never produced.
func splitWhitespace(s string, max int, fromRight bool) []string {
	if !fromRight {
		var out []string
		rest := strings.TrimLeftFunc(s, isPySpace)
		for rest != "" {
			if max >= 0 && len(out) == max {
				out = append(out, rest)
				break
			}
			i := strings.IndexFunc(rest, isPySpace)
			if i < 0 {
				out = append(out, rest)
				break
			}
			out = append(out, rest[:i])
			rest = strings.TrimLeftFunc(rest[i:], isPySpace)
		}
		return out
	}
	var out []string
	rest := strings.TrimRightFunc(s, isPySpace)
	for rest != "" {
		if max >= 0 && len(out) == max {
			out = append(out, rest)
			break
		}
		i := strings.LastIndexFunc(rest, isPySpace)
		if i < 0 {
			out = append(out, rest)
			break
		}
		_, sz := utf8.DecodeRuneInString(rest[i:])
		out = append(out, rest[i+sz:])
		rest = strings.TrimRightFunc(rest[:i], isPySpace)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func rsplitN(s, sep string, max int) []string {
	var out []string
	for len(out) < max {
		i := strings.LastIndex(s, sep)
		if i < 0 {
			break
		}
		out = append(out, s[i+len(sep):])
		s = s[:i]
	}
	out = append(out, s)
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// pySplitlines is str.splitlines: splits on all of Python's line boundaries.
func pySplitlines(s string, keepends bool) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); {
		r, sz := utf8.DecodeRuneInString(s[i:])
		switch r {
		case '\n', '\r', '\v', '\f', 0x1c, 0x1d, 0x1e, 0x85, 0x2028, 0x2029:
			end := i + sz
			if r == '\r' && end < len(s) && s[end] == '\n' {
				end++
			}
			if keepends {
				out = append(out, s[start:end])
			} else {
				out = append(out, s[start:i])
			}
			start, i = end, end
			continue
		}
		i += sz
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// pyTitle is str.title: a cased letter following an uncased character is
// titlecased, other cased letters are lowercased.
func pyTitle(s string) string {
	var b strings.Builder
	prevCased := false
	for _, r := range s {
		switch {
		case isCased(r):
			if prevCased {
				b.WriteString(pyLower(string(r)))
			} else {
				pyTitleRune(&b, r)
			}
			prevCased = true
		default:
			b.WriteRune(r)
			prevCased = false
		}
	}
	return b.String()
}

// pyCapitalize is str.capitalize (Python 3.8+): titlecase the first
// character, lowercase the rest.
func pyCapitalize(s string) string {
	if s == "" {
		return s
	}
	r, sz := utf8.DecodeRuneInString(s)
	var b strings.Builder
	pyTitleRune(&b, r)
	b.WriteString(pyLower(s[sz:]))
	return b.String()
}

// pyIsCase is str.isupper / str.islower: at least one cased character,
// none of the opposite case (bad) and no titlecase letters.
func pyIsCase(s string, bad func(rune) bool) bool {
	cased := false
	for _, r := range s {
		if bad(r) || unicode.IsTitle(r) {
			return false
		}
		if isCased(r) {
			cased = true
		}
	}
	return cased
}
