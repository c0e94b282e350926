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
