package chat

import (
	"errors"
	"fmt"
	"strings"
)

func (ev *evaluator) execBody(body []node, sc *scope) error {
	for _, n := range body {
		if err := ev.exec(n, sc); err != nil {
			return err
		}
	}
	return nil
}

func (ev *evaluator) exec(n node, sc *scope) error {
	if err := ev.step(); err != nil {
		return err
	}
	switch n := n.(type) {
	case *textNode:
		return ev.write(n.text)
	case *outputNode:
		v, err := ev.eval(n.expr, sc)
		if err != nil {
			return err
		}
		return ev.write(toStr(v))
	case *ifNode:
		for i, c := range n.conds {
			v, err := ev.eval(c, sc)
			if err != nil {
				return err
			}
			if truthy(v) {
				return ev.execBody(n.bodies[i], sc)
			}
		}
		return ev.execBody(n.orelse, sc)
	case *forNode:
		return ev.execFor(n, sc)
	case *setNode:
		return ev.execSet(n, sc)
	case *macroNode:
		sc.set(n.name, ev.makeMacro(n, sc))
		return nil
	case *filterBlockNode:
		text, err := ev.capture(n.body, newScope(sc))
		if err != nil {
			return err
		}
		var v value = text
		for _, f := range n.filters {
			if v, err = ev.applyFilter(f, v, sc); err != nil {
				return err
			}
		}
		return ev.write(toStr(v))
	case *withNode:
		return ev.execBody(n.body, newScope(sc))
	case *breakNode:
		return errBreak
	case *continueNode:
		return errContinue
	}
	return fmt.Errorf("unknown statement %T", n)
}

func (ev *evaluator) execFor(n *forNode, sc *scope) error {
	it, err := ev.eval(n.iter, sc)
	if err != nil {
		return err
	}
	return ev.runLoop(n, sc, it, 0)
}

// runLoop runs a for body over it; depth counts recursive loop(...) calls.
func (ev *evaluator) runLoop(n *forNode, sc *scope, it value, depth int) error {
	items, err := iterate(it)
	if err != nil {
		return withLine(err, n.line)
	}
	// The optional "if" clause filters before loop.index and friends are
	// computed, as in Jinja2.
	if n.filter != nil {
		var kept []value
		for _, item := range items {
			isc := newScope(sc)
			if err := assign(isc, n.target, item); err != nil {
				return withLine(err, n.line)
			}
			ok, err := ev.eval(n.filter, isc)
			if err != nil {
				return err
			}
			if truthy(ok) {
				kept = append(kept, item)
			}
		}
		items = kept
	}
	if len(items) == 0 {
		return ev.execBody(n.orelse, newScope(sc))
	}
	loop := &loopInfo{items: items, depth: depth}
	if n.recursive {
		loop.recurse = func(ev *evaluator, v value) (value, error) {
			if ev.depth >= maxCallDepth {
				return nil, errors.New("maximum loop recursion depth exceeded")
			}
			ev.depth++
			defer func() { ev.depth-- }()
			saved := ev.out
			var b strings.Builder
			ev.out = &b
			err := ev.runLoop(n, sc, v, depth+1)
			ev.out = saved
			return b.String(), err
		}
	}
	for i, item := range items {
		// Each iteration gets a fresh scope: Jinja2 does not carry
		// variables set in one iteration over to the next.
		isc := newScope(sc)
		if err := assign(isc, n.target, item); err != nil {
			return withLine(err, n.line)
		}
		loop.index0 = i
		isc.set("loop", loop)
		err := ev.execBody(n.body, isc)
		if err == errBreak {
			break
		}
		if err != nil && err != errContinue {
			return err
		}
	}
	return nil
}

// assign binds a for/set target (a name or a tuple of names) in sc.
func assign(sc *scope, target expr, v value) error {
	switch t := target.(type) {
	case *nameExpr:
		sc.set(t.name, v)
		return nil
	case *listExpr:
		items, err := iterate(v)
		if err != nil {
			return err
		}
		if _, ok := v.(undefined); ok {
			return errors.New(v.(undefined).errMsg())
		}
		if len(items) != len(t.items) {
			if len(items) > len(t.items) {
				return fmt.Errorf("too many values to unpack (expected %d)", len(t.items))
			}
			return fmt.Errorf("not enough values to unpack (expected %d, got %d)", len(t.items), len(items))
		}
		for i, sub := range t.items {
			if err := assign(sc, sub, items[i]); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("cannot assign to %T", target)
}

func (ev *evaluator) execSet(n *setNode, sc *scope) error {
	var v value
	var err error
	if n.body != nil {
		text, err := ev.capture(n.body, newScope(sc))
		if err != nil {
			return err
		}
		v = text
		for _, f := range n.filter {
			if v, err = ev.applyFilter(f, v, sc); err != nil {
				return err
			}
		}
	} else if v, err = ev.eval(n.value, sc); err != nil {
		return err
	}
	if a, ok := n.target.(*attrExpr); ok {
		obj, err := ev.eval(a.obj, sc)
		if err != nil {
			return err
		}
		ns, ok := obj.(*namespace)
		if !ok {
			return errorf(n.line, "cannot assign attribute on non-namespace object")
		}
		ns.attrs.setStr(a.name, v)
		return nil
	}
	return withLineIf(assign(sc, n.target, v), n.line)
}

// makeMacro closes over the defining scope; each call renders the body in a
// fresh child scope and returns the text.
func (ev *evaluator) makeMacro(n *macroNode, def *scope) *callable {
	return &callable{name: n.name, fn: func(ev *evaluator, args []value, kw *dictVal) (value, error) {
		if ev.depth >= maxCallDepth {
			return nil, errors.New("maximum macro recursion depth exceeded")
		}
		ev.depth++
		defer func() { ev.depth-- }()
		sc := newScope(def)
		firstDefault := len(n.params) - len(n.defaults)
		var varargs []value
		if len(args) > len(n.params) && !n.varargs {
			return nil, fmt.Errorf("macro '%s' takes not more than %d argument(s)", n.name, len(n.params))
		}
		for i, a := range args {
			if i < len(n.params) {
				sc.set(n.params[i], a)
			} else {
				varargs = append(varargs, a)
			}
		}
		extra := newDict()
		for i, k := range kw.keys {
			name := k.(string)
			found := false
			for j, p := range n.params {
				if p == name {
					if j < len(args) {
						return nil, fmt.Errorf("macro '%s' got multiple values for argument '%s'", n.name, name)
					}
					sc.set(p, kw.vals[i])
					found = true
				}
			}
			if !found {
				if !n.kwargs {
					return nil, fmt.Errorf("macro '%s' takes no keyword argument '%s'", n.name, name)
				}
				extra.setStr(name, kw.vals[i])
			}
		}
		for j, p := range n.params {
			if _, ok := sc.local(p); ok {
				continue
			}
			if j >= firstDefault {
				d, err := ev.eval(n.defaults[j-firstDefault], sc)
				if err != nil {
					return nil, err
				}
				sc.set(p, d)
			} else {
				sc.set(p, undefined{hint: fmt.Sprintf("parameter '%s' was not provided", p)})
			}
		}
		sc.set("varargs", &listVal{items: varargs, tuple: true})
		sc.set("kwargs", extra)
		return ev.capture(n.body, sc)
	}}
}

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
