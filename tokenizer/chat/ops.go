// Python semantics of the operators: arithmetic, concatenation,
// repetition, comparison and membership.

package chat

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

func unaryOp(op string, x value) (value, error) {
	if op == "not" {
		return !truthy(x), nil
	}
	if u, ok := x.(undefined); ok {
		return nil, errors.New(u.errMsg())
	}
	n, ok := toNumber(x)
	if !ok {
		return nil, fmt.Errorf("bad operand type for unary %s: '%s'", op, typeName(x))
	}
	if op == "+" {
		if n.isInt {
			return n.i, nil
		}
		return n.f, nil
	}
	if n.isInt {
		return -n.i, nil
	}
	return -n.f, nil
}

func binaryOp(op string, l, r value) (value, error) {
	if op == "~" {
		s := toStr(l) + toStr(r)
		return s, checkLen(len(s))
	}
	if u, ok := l.(undefined); ok {
		return nil, errors.New(u.errMsg())
	}
	if u, ok := r.(undefined); ok {
		return nil, errors.New(u.errMsg())
	}
	switch op {
	case "+":
		switch a := l.(type) {
		case string:
			if b, ok := r.(string); ok {
				return a + b, checkLen(len(a) + len(b))
			}
			return nil, fmt.Errorf("can only concatenate str (not \"%s\") to str", typeName(r))
		case *listVal:
			if b, ok := r.(*listVal); ok && a.tuple == b.tuple {
				if len(a.items)+len(b.items) > maxListLen {
					return nil, errors.New("list too long")
				}
				items := append(append([]value{}, a.items...), b.items...)
				return &listVal{items: items, tuple: a.tuple}, nil
			}
			return nil, fmt.Errorf("can only concatenate %s (not \"%s\") to %s", typeName(a), typeName(r), typeName(a))
		}
	case "*":
		if v, ok, err := repeat(l, r); ok {
			return v, err
		}
		if v, ok, err := repeat(r, l); ok {
			return v, err
		}
	case "%":
		if s, ok := l.(string); ok {
			return percentFormat(s, r)
		}
	}
	a, ok1 := toNumber(l)
	b, ok2 := toNumber(r)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("unsupported operand type(s) for %s: '%s' and '%s'", op, typeName(l), typeName(r))
	}
	return arith(op, a, b)
}

// repeat implements str * int and list * int.
func repeat(seq, n value) (value, bool, error) {
	cnt, ok := n.(int64)
	if !ok {
		if b, isBool := n.(bool); isBool {
			cnt, ok = map[bool]int64{true: 1, false: 0}[b], true
		}
	}
	if !ok {
		return nil, false, nil
	}
	if cnt < 0 {
		cnt = 0
	}
	switch s := seq.(type) {
	case string:
		if len(s) > 0 && cnt > int64(maxOutput/len(s)) {
			return nil, true, errors.New("value too large")
		}
		return strings.Repeat(s, int(cnt)), true, nil
	case *listVal:
		if len(s.items) > 0 && cnt > int64(maxListLen/len(s.items)) {
			return nil, true, errors.New("value too large")
		}
		var items []value
		for i := int64(0); i < cnt && len(s.items) > 0; i++ {
			items = append(items, s.items...)
		}
		return &listVal{items: items, tuple: s.tuple}, true, nil
	}
	return nil, false, nil
}

func arith(op string, a, b number) (value, error) {
	if a.isInt && b.isInt {
		x, y := a.i, b.i
		switch op {
		case "+":
			r := x + y
			if (r > x) != (y > 0) {
				return nil, errOverflow
			}
			return r, nil
		case "-":
			r := x - y
			if (r < x) != (y > 0) {
				return nil, errOverflow
			}
			return r, nil
		case "*":
			if x != 0 && y != 0 {
				r := x * y
				if r/y != x || (x == -1 && y == math.MinInt64) || (y == -1 && x == math.MinInt64) {
					return nil, errOverflow
				}
				return r, nil
			}
			return int64(0), nil
		case "/":
			if y == 0 {
				return nil, errors.New("division by zero")
			}
			return float64(x) / float64(y), nil
		case "//":
			if y == 0 {
				return nil, errors.New("integer division or modulo by zero")
			}
			q := x / y
			if (x%y != 0) && ((x < 0) != (y < 0)) {
				q--
			}
			return q, nil
		case "%":
			if y == 0 {
				return nil, errors.New("integer division or modulo by zero")
			}
			m := x % y
			if m != 0 && ((m < 0) != (y < 0)) {
				m += y
			}
			return m, nil
		case "**":
			if y < 0 {
				return math.Pow(float64(x), float64(y)), nil
			}
			switch {
			case x == 1 || y == 0:
				return int64(1), nil
			case x == 0:
				return int64(0), nil
			case x == -1:
				return map[bool]int64{true: 1, false: -1}[y%2 == 0], nil
			}
			// |x| >= 2, so this overflows within 64 iterations.
			r := number{i: 1, isInt: true}
			for i := int64(0); i < y; i++ {
				v, err := arith("*", r, a)
				if err != nil {
					return nil, err
				}
				r.i = v.(int64)
			}
			return r.i, nil
		}
	}
	x, y := a.float(), b.float()
	switch op {
	case "+":
		return x + y, nil
	case "-":
		return x - y, nil
	case "*":
		return x * y, nil
	case "/":
		if y == 0 {
			return nil, errors.New("float division by zero")
		}
		return x / y, nil
	case "//":
		if y == 0 {
			return nil, errors.New("float floor division by zero")
		}
		return math.Floor(x / y), nil
	case "%":
		if y == 0 {
			return nil, errors.New("float modulo")
		}
		m := math.Mod(x, y)
		if m != 0 && ((m < 0) != (y < 0)) {
			m += y
		}
		return m, nil
	case "**":
		return math.Pow(x, y), nil
	}
	return nil, fmt.Errorf("unknown operator %s", op)
}

func compareOp(op string, l, r value) (bool, error) {
	switch op {
	case "==":
		return equal(l, r), nil
	case "!=":
		return !equal(l, r), nil
	case "in":
		return contains(r, l)
	case "notin":
		ok, err := contains(r, l)
		return !ok, err
	}
	if u, ok := l.(undefined); ok {
		return false, errors.New(u.errMsg())
	}
	if u, ok := r.(undefined); ok {
		return false, errors.New(u.errMsg())
	}
	c, err := compare(l, r)
	if err != nil {
		return false, errors.New(strings.Replace(err.Error(), "'<'", "'"+op+"'", 1))
	}
	switch op {
	case "<":
		return c < 0, nil
	case "<=":
		return c <= 0, nil
	case ">":
		return c > 0, nil
	}
	return c >= 0, nil
}

// contains is Python's "needle in container".
func contains(container, needle value) (bool, error) {
	switch c := container.(type) {
	case string:
		s, ok := needle.(string)
		if !ok {
			return false, fmt.Errorf("'in <string>' requires string as left operand, not %s", typeName(needle))
		}
		return strings.Contains(c, s), nil
	case *listVal:
		for _, it := range c.items {
			if equal(it, needle) {
				return true, nil
			}
		}
		return false, nil
	case *dictVal:
		if _, err := hashKey(needle); err != nil {
			return false, err
		}
		_, ok := c.get(needle)
		return ok, nil
	case undefined:
		return false, nil
	}
	return false, fmt.Errorf("argument of type '%s' is not iterable", typeName(container))
}
