// Filters over sequences and mappings: selection, sorting, mapping and
// aggregation, with Jinja2's attribute= arguments.

package chat

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

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
