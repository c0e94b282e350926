// Attribute, item and slice access, iteration and the loop variable.

package chat

import (
	"errors"
	"fmt"
)

// iterate lists what a for loop visits: list items, dict keys, string
// characters; Undefined iterates as empty.
func iterate(v value) ([]value, error) {
	switch v := v.(type) {
	case *listVal:
		return v.items, nil
	case *dictVal:
		return append([]value{}, v.keys...), nil
	case string:
		var out []value
		for _, r := range v {
			out = append(out, string(r))
		}
		return out, nil
	case undefined:
		return nil, nil
	}
	return nil, fmt.Errorf("'%s' object is not iterable", typeName(v))
}

// loopInfo is the "loop" variable.
type loopInfo struct {
	items   []value
	index0  int
	depth   int
	last    value
	hasLast bool
	// recurse renders the loop body over another iterable, for
	// {% for ... recursive %} loops; nil otherwise.
	recurse func(ev *evaluator, v value) (value, error)
}

func (l *loopInfo) attr(name string) (value, bool) {
	n := len(l.items)
	i := l.index0
	switch name {
	case "index":
		return int64(i + 1), true
	case "index0":
		return int64(i), true
	case "revindex":
		return int64(n - i), true
	case "revindex0":
		return int64(n - i - 1), true
	case "first":
		return i == 0, true
	case "last":
		return i == n-1, true
	case "length":
		return int64(n), true
	case "depth":
		return int64(l.depth + 1), true
	case "depth0":
		return int64(l.depth), true
	case "previtem":
		if i == 0 {
			return undefined{hint: "there is no previous item"}, true
		}
		return l.items[i-1], true
	case "nextitem":
		if i+1 >= n {
			return undefined{hint: "there is no next item"}, true
		}
		return l.items[i+1], true
	case "cycle":
		return &callable{name: "cycle", fn: func(_ *evaluator, args []value, _ *dictVal) (value, error) {
			if len(args) == 0 {
				return nil, errors.New("no items for cycling given")
			}
			return args[i%len(args)], nil
		}}, true
	case "changed":
		return &callable{name: "changed", fn: func(_ *evaluator, args []value, _ *dictVal) (value, error) {
			cur := newList(args)
			if l.hasLast && equal(l.last, cur) {
				return false, nil
			}
			l.last, l.hasLast = cur, true
			return true, nil
		}}, true
	}
	return nil, false
}

// getAttr is Jinja2's obj.name: an attribute (method) first, then an item.
func getAttr(obj value, name string) (value, error) {
	switch o := obj.(type) {
	case undefined:
		return nil, errors.New(o.errMsg())
	case *namespace:
		if v, ok := o.attrs.get(name); ok {
			return v, nil
		}
	case *loopInfo:
		if v, ok := o.attr(name); ok {
			return v, nil
		}
	}
	if m, ok := method(obj, name); ok {
		return m, nil
	}
	if d, ok := obj.(*dictVal); ok {
		if v, ok := d.get(name); ok {
			return v, nil
		}
	}
	return undefined{hint: fmt.Sprintf("'%s object' has no attribute '%s'", typeName(obj), name)}, nil
}

// getItem is Jinja2's obj[key]: an item first, then an attribute.
func getItem(obj, key value) (value, error) {
	switch o := obj.(type) {
	case undefined:
		return nil, errors.New(o.errMsg())
	case *dictVal:
		if v, ok := o.get(key); ok {
			return v, nil
		}
	case *listVal:
		if n, ok := toNumber(key); ok && n.isInt {
			i := n.i
			if i < 0 {
				i += int64(len(o.items))
			}
			if i >= 0 && i < int64(len(o.items)) {
				return o.items[i], nil
			}
		}
	case string:
		if n, ok := toNumber(key); ok && n.isInt {
			rs := []rune(o)
			i := n.i
			if i < 0 {
				i += int64(len(rs))
			}
			if i >= 0 && i < int64(len(rs)) {
				return string(rs[i]), nil
			}
		}
	}
	if s, ok := key.(string); ok {
		return getAttr(obj, s)
	}
	return undefined{hint: fmt.Sprintf("'%s object' has no attribute %s", typeName(obj), repr(key))}, nil
}

// sliceValue is Python's seq[start:stop:step] for lists, tuples and strings.
func sliceValue(obj, start, stop, step value) (value, error) {
	var n int
	var rs []rune
	switch o := obj.(type) {
	case *listVal:
		n = len(o.items)
	case string:
		rs = []rune(o)
		n = len(rs)
	case undefined:
		return nil, errors.New(o.errMsg())
	default:
		return undefined{hint: fmt.Sprintf("'%s' object is not subscriptable", typeName(obj))}, nil
	}
	idx := func(v value, def int64) (int64, error) {
		if v == nil {
			return def, nil
		}
		num, ok := toNumber(v)
		if !ok || !num.isInt {
			return 0, errors.New("slice indices must be integers or None")
		}
		return num.i, nil
	}
	st, err := idx(step, 1)
	if err != nil {
		return nil, err
	}
	if st == 0 {
		return nil, errors.New("slice step cannot be zero")
	}
	ln := int64(n)
	var lo, hi int64
	if st > 0 {
		lo, hi = 0, ln
	} else {
		lo, hi = ln-1, -1
	}
	clamp := func(v value, def int64) (int64, error) {
		if v == nil {
			return def, nil
		}
		i, err := idx(v, def)
		if err != nil {
			return 0, err
		}
		if i < 0 {
			i += ln
			if i < 0 {
				if st < 0 {
					return -1, nil
				}
				return 0, nil
			}
		} else if i >= ln {
			if st < 0 {
				return ln - 1, nil
			}
			return ln, nil
		}
		return i, nil
	}
	b, err := clamp(start, lo)
	if err != nil {
		return nil, err
	}
	e, err := clamp(stop, hi)
	if err != nil {
		return nil, err
	}
	var picked []int64
	for i := b; (st > 0 && i < e) || (st < 0 && i > e); i += st {
		picked = append(picked, i)
	}
	if o, ok := obj.(*listVal); ok {
		items := make([]value, len(picked))
		for j, i := range picked {
			items[j] = o.items[i]
		}
		return &listVal{items: items, tuple: o.tuple}, nil
	}
	out := make([]rune, len(picked))
	for j, i := range picked {
		out[j] = rs[i]
	}
	return string(out), nil
}
