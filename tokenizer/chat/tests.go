package chat

import (
	"errors"
	"fmt"
	"unicode"
)

type testFunc func(v value, args []value) (bool, error)

// tests are Jinja2's built-in tests ("x is defined", "x is string", ...).
var tests map[string]testFunc

func init() {
	cmp := func(op string) testFunc {
		return func(v value, args []value) (bool, error) {
			if len(args) != 1 {
				return false, errors.New("comparison test needs one argument")
			}
			return compareOp(op, v, args[0])
		}
	}
	is := func(f func(value) bool) testFunc {
		return func(v value, _ []value) (bool, error) { return f(v), nil }
	}
	tests = map[string]testFunc{
		"defined":   is(func(v value) bool { _, u := v.(undefined); return !u }),
		"undefined": is(func(v value) bool { _, u := v.(undefined); return u }),
		"none":      is(func(v value) bool { return v == nil }),
		"boolean":   is(func(v value) bool { _, ok := v.(bool); return ok }),
		"true":      is(func(v value) bool { b, ok := v.(bool); return ok && b }),
		"false":     is(func(v value) bool { b, ok := v.(bool); return ok && !b }),
		"integer":   is(func(v value) bool { _, ok := v.(int64); return ok }),
		"float":     is(func(v value) bool { _, ok := v.(float64); return ok }),
		"number":    is(func(v value) bool { _, ok := toNumber(v); return ok }),
		"string":    is(func(v value) bool { _, ok := v.(string); return ok }),
		"mapping":   is(func(v value) bool { _, ok := v.(*dictVal); return ok }),
		"iterable": is(func(v value) bool {
			switch v.(type) {
			case string, *listVal, *dictVal, undefined:
				return true
			}
			return false
		}),
		"sequence": is(func(v value) bool {
			switch v.(type) {
			case string, *listVal, *dictVal:
				return true
			}
			return false
		}),
		"callable": is(func(v value) bool { _, ok := v.(*callable); return ok }),
		"even":     intTest(func(i int64) bool { return i%2 == 0 }),
		"odd":      intTest(func(i int64) bool { return i%2 != 0 }),
		"divisibleby": func(v value, args []value) (bool, error) {
			if len(args) != 1 {
				return false, errors.New("divisibleby needs one argument")
			}
			r, err := binaryOp("%", v, args[0])
			if err != nil {
				return false, err
			}
			return equal(r, int64(0)), nil
		},
		// Jinja2 tests str(value).islower() / .isupper().
		"lower": is(func(v value) bool { return pyIsCase(toStr(v), unicode.IsUpper) }),
		"upper": is(func(v value) bool { return pyIsCase(toStr(v), unicode.IsLower) }),
		"in": func(v value, args []value) (bool, error) {
			if len(args) != 1 {
				return false, errors.New("in test needs one argument")
			}
			return contains(args[0], v)
		},
		"sameas": func(v value, args []value) (bool, error) {
			if len(args) != 1 {
				return false, errors.New("sameas test needs one argument")
			}
			return sameAs(v, args[0]), nil
		},
		"eq": cmp("=="), "equalto": cmp("=="), "==": cmp("=="),
		"ne": cmp("!="), "!=": cmp("!="),
		"lt": cmp("<"), "lessthan": cmp("<"), "<": cmp("<"),
		"le": cmp("<="), "<=": cmp("<="),
		"gt": cmp(">"), "greaterthan": cmp(">"), ">": cmp(">"),
		"ge": cmp(">="), ">=": cmp(">="),
	}
}

func intTest(f func(int64) bool) testFunc {
	return func(v value, _ []value) (bool, error) {
		n, ok := toNumber(v)
		if !ok {
			return false, fmt.Errorf("unsupported operand type for %%: '%s'", typeName(v))
		}
		if !n.isInt {
			return f(int64(n.f)) && n.f == float64(int64(n.f)), nil
		}
		return f(n.i), nil
	}
}

// sameAs approximates Python's "is": singletons and identical containers.
func sameAs(a, b value) bool {
	switch a.(type) {
	case nil, bool:
		return a == b
	case *listVal, *dictVal, *namespace, *callable:
		return a == b
	case int64, string:
		return a == b // small ints and interned strings in CPython
	}
	return false
}

func (ev *evaluator) evalTest(e *testExpr, sc *scope) (value, error) {
	fn, ok := tests[e.name]
	if !ok {
		return nil, errorf(e.line, "no test named '%s'", e.name)
	}
	v, err := ev.eval(e.arg, sc)
	if err != nil {
		return nil, err
	}
	args, _, err := ev.evalArgs(e.args, e.kwargs, sc)
	if err != nil {
		return nil, err
	}
	r, err := fn(v, args)
	if err != nil {
		return nil, withLine(err, e.line)
	}
	return r != e.negate, nil
}
