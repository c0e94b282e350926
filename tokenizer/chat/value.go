package chat

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
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

// toStr is Python's str(): what {{ }} prints.
func toStr(v value) string {
	switch v := v.(type) {
	case undefined:
		return ""
	case string:
		return v
	}
	return repr(v)
}

// repr is Python's repr(), used for containers and non-string scalars.
func repr(v value) string {
	var b strings.Builder
	writeRepr(&b, v, 0)
	return b.String()
}

func writeRepr(b *strings.Builder, v value, depth int) {
	if depth > maxDepth {
		b.WriteString("...")
		return
	}
	switch v := v.(type) {
	case undefined:
		b.WriteString("")
	case nil:
		b.WriteString("None")
	case bool:
		if v {
			b.WriteString("True")
		} else {
			b.WriteString("False")
		}
	case int64:
		b.WriteString(strconv.FormatInt(v, 10))
	case float64:
		b.WriteString(pyFloatRepr(v))
	case string:
		b.WriteString(pyStrRepr(v))
	case *listVal:
		open, close := "[", "]"
		if v.tuple {
			open, close = "(", ")"
		}
		b.WriteString(open)
		for i, it := range v.items {
			if i > 0 {
				b.WriteString(", ")
			}
			writeRepr(b, it, depth+1)
		}
		if v.tuple && len(v.items) == 1 {
			b.WriteString(",")
		}
		b.WriteString(close)
	case *dictVal:
		b.WriteString("{")
		for i, k := range v.keys {
			if i > 0 {
				b.WriteString(", ")
			}
			writeRepr(b, k, depth+1)
			b.WriteString(": ")
			writeRepr(b, v.vals[i], depth+1)
		}
		b.WriteString("}")
	case *namespace:
		b.WriteString("<Namespace ")
		writeRepr(b, v.attrs, depth+1)
		b.WriteString(">")
	case *callable:
		b.WriteString("<function " + v.name + ">")
	default:
		b.WriteString("<" + typeName(v) + " object>")
	}
}

// pyFloatRepr formats like Python's float.__repr__: shortest round-trip
// digits, scientific notation when the exponent is < -4 or >= 16, and always
// a ".0" on integral values.
func pyFloatRepr(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // d.ddddde±XX
	mant, expS, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expS)
	neg := strings.HasPrefix(mant, "-")
	mant = strings.TrimPrefix(mant, "-")
	digits := strings.Replace(mant, ".", "", 1)
	sign := ""
	if neg {
		sign = "-"
	}
	if exp < -4 || exp >= 16 {
		m := digits[:1]
		if len(digits) > 1 {
			m += "." + digits[1:]
		}
		es := fmt.Sprintf("%+03d", exp)
		return sign + m + "e" + es
	}
	if exp < 0 {
		return sign + "0." + strings.Repeat("0", -exp-1) + digits
	}
	if len(digits) <= exp+1 {
		return sign + digits + strings.Repeat("0", exp+1-len(digits)) + ".0"
	}
	return sign + digits[:exp+1] + "." + digits[exp+1:]
}

// pyStrRepr is Python's repr() of a str: single quotes unless the string
// contains ' and no ", with non-printable characters escaped.
func pyStrRepr(s string) string {
	q := byte('\'')
	if strings.IndexByte(s, '\'') >= 0 && strings.IndexByte(s, '"') < 0 {
		q = '"'
	}
	var b strings.Builder
	b.WriteByte(q)
	for _, r := range s {
		switch {
		case r == rune(q) || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r >= 0x80 && !pyPrintable(r):
			switch {
			case r <= 0xff:
				fmt.Fprintf(&b, `\x%02x`, r)
			case r <= 0xffff:
				fmt.Fprintf(&b, `\u%04x`, r)
			default:
				fmt.Fprintf(&b, `\U%08x`, r)
			}
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(q)
	return b.String()
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

// fromGo converts caller data (messages, tools, extra kwargs) to template
// values the way json.loads would have produced them in Python.
//
// Go maps have no order, so their keys are sorted; pass json.RawMessage to
// keep a client's key order exactly. float64 values that are integral are
// turned into ints because encoding/json decodes every JSON number to
// float64, while Python's json.loads keeps "10" an int; use json.Number to
// keep "10.0" a float.
func fromGo(v any, depth int) (value, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("value nested too deeply")
	}
	switch v := v.(type) {
	case nil:
		return nil, nil
	case bool, int64, string:
		return v, nil
	case int:
		return int64(v), nil
	case int32:
		return int64(v), nil
	case float32:
		return fromGo(float64(v), depth)
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
			return int64(v), nil
		}
		return v, nil
	case json.Number:
		return numberFromJSON(string(v))
	case json.RawMessage:
		return decodeOrderedJSON(v)
	case []any:
		out := make([]value, len(v))
		for i, it := range v {
			x, err := fromGo(it, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = x
		}
		return newList(out), nil
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		d := newDict()
		for _, k := range keys {
			x, err := fromGo(v[k], depth+1)
			if err != nil {
				return nil, err
			}
			d.setStr(k, x)
		}
		return d, nil
	}
	// Anything else (structs, typed slices and maps) goes through its JSON
	// form, which is what an HTTP client would have sent.
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer && rv.IsNil() {
		return nil, nil
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("cannot pass %T to a template: %w", v, err)
	}
	return decodeOrderedJSON(raw)
}

func numberFromJSON(s string) (value, error) {
	if !strings.ContainsAny(s, ".eE") {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return i, nil
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return nil, fmt.Errorf("bad JSON number %q", s)
	}
	return f, nil
}

// decodeOrderedJSON decodes JSON keeping object key order, as json.loads does.
func decodeOrderedJSON(raw []byte) (value, error) {
	if !utf8.Valid(raw) {
		return nil, fmt.Errorf("invalid UTF-8 in JSON value")
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	v, err := decodeJSONValue(dec, 0)
	if err != nil {
		return nil, fmt.Errorf("decode JSON: %w", err)
	}
	return v, nil
}

func decodeJSONValue(dec *json.Decoder, depth int) (value, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '[':
			l := newList(nil)
			for dec.More() {
				x, err := decodeJSONValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				l.items = append(l.items, x)
			}
			_, err := dec.Token()
			return l, err
		case '{':
			d := newDict()
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, _ := kt.(string)
				x, err := decodeJSONValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				d.setStr(k, x)
			}
			_, err := dec.Token()
			return d, err
		}
		return nil, fmt.Errorf("unexpected %v", t)
	case json.Number:
		return numberFromJSON(string(t))
	case string, bool, nil:
		return t, nil
	}
	return nil, fmt.Errorf("unexpected token %v", tok)
}
