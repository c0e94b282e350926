package chat

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// The evaluator works on a small dynamic value model that mirrors the Python
// objects a Jinja2 template sees after transformers hands it json.loads-style
// data:
//
//	undefined  -> undefined (Jinja2's default Undefined: prints "", falsy)
//	nil        -> None
//	bool, int64, float64, string
//	*listVal   -> list or tuple
//	*dictVal   -> dict (insertion ordered, like Python 3.7+)
//	*namespace -> jinja2 namespace()
//	*loopInfo  -> the "loop" variable of a for block
//	callable   -> macros, builtins and bound methods
//
// Strings are Go strings holding UTF-8; anything that Python indexes by code
// point (len, slicing, indexing) converts to runes first.
type value = any

// undefined is Jinja2's default Undefined. hint explains where it came from
// so that errors raised on use (attribute access, calls, arithmetic) read
// like Jinja2's.
type undefined struct{ hint string }

func (u undefined) errMsg() string {
	if u.hint == "" {
		return "value is undefined"
	}
	return u.hint
}

type listVal struct {
	items []value
	tuple bool
}

func newList(items []value) *listVal { return &listVal{items: items} }

// dictVal is an insertion-ordered dict. Keys are hashed with hashKey so that
// 1, 1.0 and True collide like in Python.
type dictVal struct {
	keys []value
	vals []value
	idx  map[string]int
}

func newDict() *dictVal { return &dictVal{idx: map[string]int{}} }

func hashKey(k value) (string, error) { return hashKeyDepth(k, 0) }

func hashKeyDepth(k value, depth int) (string, error) {
	if depth > maxDepth {
		return "", fmt.Errorf("key nested too deeply")
	}
	switch k := k.(type) {
	case nil:
		return "N", nil
	case bool:
		if k {
			return "n1", nil
		}
		return "n0", nil
	case int64:
		return "n" + strconv.FormatInt(k, 10), nil
	case float64:
		if k == math.Trunc(k) && math.Abs(k) < 1<<63 {
			return "n" + strconv.FormatInt(int64(k), 10), nil
		}
		return "f" + strconv.FormatFloat(k, 'g', -1, 64), nil
	case string:
		return "s" + k, nil
	case *listVal:
		if k.tuple {
			var b strings.Builder
			b.WriteString("t(")
			for _, it := range k.items {
				h, err := hashKeyDepth(it, depth+1)
				if err != nil {
					return "", err
				}
				// Length-prefixed, so nesting grows keys linearly.
				b.WriteString(strconv.Itoa(len(h)))
				b.WriteByte(':')
				b.WriteString(h)
			}
			return b.String(), nil
		}
	}
	return "", fmt.Errorf("unhashable type: '%s'", typeName(k))
}

func (d *dictVal) get(k value) (value, bool) {
	h, err := hashKey(k)
	if err != nil {
		return nil, false
	}
	i, ok := d.idx[h]
	if !ok {
		return nil, false
	}
	return d.vals[i], true
}

func (d *dictVal) set(k, v value) error {
	h, err := hashKey(k)
	if err != nil {
		return err
	}
	if i, ok := d.idx[h]; ok {
		d.vals[i] = v
		return nil
	}
	d.idx[h] = len(d.keys)
	d.keys = append(d.keys, k)
	d.vals = append(d.vals, v)
	return nil
}

// setStr is set for string keys, which can never fail.
func (d *dictVal) setStr(k string, v value) { _ = d.set(k, v) }

type namespace struct{ attrs *dictVal }

// callable is anything a template can call: builtins, bound methods, macros.
type callable struct {
	name string
	fn   func(ev *evaluator, args []value, kw *dictVal) (value, error)
}

func typeName(v value) string {
	switch v := v.(type) {
	case undefined:
		return "Undefined"
	case nil:
		return "NoneType"
	case bool:
		return "bool"
	case int64:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case *listVal:
		if v.tuple {
			return "tuple"
		}
		return "list"
	case *dictVal:
		return "dict"
	case *namespace:
		return "Namespace"
	case *loopInfo:
		return "LoopContext"
	case *callable:
		return "function"
	}
	return fmt.Sprintf("%T", v)
}

func truthy(v value) bool {
	switch v := v.(type) {
	case undefined, nil:
		return false
	case bool:
		return v
	case int64:
		return v != 0
	case float64:
		return v != 0
	case string:
		return v != ""
	case *listVal:
		return len(v.items) > 0
	case *dictVal:
		return len(v.keys) > 0
	}
	return true
}

// equal is Python ==.
func equal(a, b value) bool {
	switch a := a.(type) {
	case undefined:
		_, ok := b.(undefined)
		return ok
	case nil:
		return b == nil
	case string:
		bs, ok := b.(string)
		return ok && a == bs
	case bool, int64, float64:
		x, ok1 := toNumber(a)
		y, ok2 := toNumber(b)
		if !ok1 || !ok2 {
			return false
		}
		return numEq(x, y)
	case *listVal:
		bl, ok := b.(*listVal)
		if !ok || bl.tuple != a.tuple || len(bl.items) != len(a.items) {
			return false
		}
		for i := range a.items {
			if !equal(a.items[i], bl.items[i]) {
				return false
			}
		}
		return true
	case *dictVal:
		bd, ok := b.(*dictVal)
		if !ok || len(bd.keys) != len(a.keys) {
			return false
		}
		for i, k := range a.keys {
			v, ok := bd.get(k)
			if !ok || !equal(a.vals[i], v) {
				return false
			}
		}
		return true
	}
	return a == b
}

// number is an int or float after bool promotion (Python bools are ints).
type number struct {
	i     int64
	f     float64
	isInt bool
}

func toNumber(v value) (number, bool) {
	switch v := v.(type) {
	case bool:
		if v {
			return number{i: 1, isInt: true}, true
		}
		return number{isInt: true}, true
	case int64:
		return number{i: v, isInt: true}, true
	case float64:
		return number{f: v}, true
	}
	return number{}, false
}

func (n number) float() float64 {
	if n.isInt {
		return float64(n.i)
	}
	return n.f
}

func numEq(x, y number) bool {
	if x.isInt && y.isInt {
		return x.i == y.i
	}
	return x.float() == y.float()
}

// compare implements Python's ordering for the types templates compare:
// numbers with numbers, strings with strings, lists/tuples element-wise.
func compare(a, b value) (int, error) {
	if x, ok := toNumber(a); ok {
		if y, ok := toNumber(b); ok {
			if x.isInt && y.isInt {
				return cmpOrdered(x.i, y.i), nil
			}
			return cmpOrdered(x.float(), y.float()), nil
		}
	}
	if x, ok := a.(string); ok {
		if y, ok := b.(string); ok {
			return strings.Compare(x, y), nil
		}
	}
	if x, ok := a.(*listVal); ok {
		if y, ok := b.(*listVal); ok && x.tuple == y.tuple {
			for i := 0; i < len(x.items) && i < len(y.items); i++ {
				if equal(x.items[i], y.items[i]) {
					continue
				}
				return compare(x.items[i], y.items[i])
			}
			return cmpOrdered(len(x.items), len(y.items)), nil
		}
	}
	return 0, fmt.Errorf("'<' not supported between instances of '%s' and '%s'", typeName(a), typeName(b))
}

func cmpOrdered[T int | int64 | float64](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
