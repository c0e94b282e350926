package chat

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// jsonOpts are the json.dumps arguments transformers' tojson filter exposes.
type jsonOpts struct {
	ensureASCII bool
	indent      *string // nil: compact one-line form
	itemSep     string
	keySep      string
	sortKeys    bool
}

// pyJSONDumps reproduces Python's json.dumps output byte for byte: ", " and
// ": " separators by default ("," with an indent), Python float repr,
// NaN/Infinity, and \uXXXX escapes only for control characters unless
// ensure_ascii is set.
func pyJSONDumps(v value, o jsonOpts) (string, error) {
	var b strings.Builder
	if err := writeJSON(&b, v, o, 0); err != nil {
		return "", err
	}
	return b.String(), nil
}

func writeJSON(b *strings.Builder, v value, o jsonOpts, level int) error {
	if level > maxDepth {
		return fmt.Errorf("maximum recursion depth exceeded while encoding a JSON object")
	}
	if err := checkLen(b.Len()); err != nil {
		return err
	}
	switch v := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		if v {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case int64:
		b.WriteString(strconv.FormatInt(v, 10))
	case float64:
		b.WriteString(jsonFloat(v))
	case string:
		writeJSONString(b, v, o.ensureASCII)
	case *listVal:
		if len(v.items) == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteByte('[')
		for i, it := range v.items {
			if i > 0 {
				b.WriteString(o.itemSep)
			}
			newline(b, o, level+1)
			if err := writeJSON(b, it, o, level+1); err != nil {
				return err
			}
		}
		newline(b, o, level)
		b.WriteByte(']')
	case *dictVal:
		if len(v.keys) == 0 {
			b.WriteString("{}")
			return nil
		}
		type kv struct {
			k string
			v value
		}
		pairs := make([]kv, 0, len(v.keys))
		for i, k := range v.keys {
			ks, err := jsonKey(k)
			if err != nil {
				return err
			}
			pairs = append(pairs, kv{ks, v.vals[i]})
		}
		if o.sortKeys {
			sort.SliceStable(pairs, func(i, j int) bool { return pairs[i].k < pairs[j].k })
		}
		b.WriteByte('{')
		for i, p := range pairs {
			if i > 0 {
				b.WriteString(o.itemSep)
			}
			newline(b, o, level+1)
			writeJSONString(b, p.k, o.ensureASCII)
			b.WriteString(o.keySep)
			if err := writeJSON(b, p.v, o, level+1); err != nil {
				return err
			}
		}
		newline(b, o, level)
		b.WriteByte('}')
	default:
		return fmt.Errorf("Object of type %s is not JSON serializable", typeName(v))
	}
	return nil
}

func newline(b *strings.Builder, o jsonOpts, level int) {
	if o.indent == nil {
		return
	}
	b.WriteByte('\n')
	for i := 0; i < level; i++ {
		b.WriteString(*o.indent)
	}
}

// jsonKey converts a dict key the way json.dumps does for non-str keys.
func jsonKey(k value) (string, error) {
	switch k := k.(type) {
	case string:
		return k, nil
	case nil:
		return "null", nil
	case bool:
		if k {
			return "true", nil
		}
		return "false", nil
	case int64:
		return strconv.FormatInt(k, 10), nil
	case float64:
		return jsonFloat(k), nil
	}
	return "", fmt.Errorf("keys must be str, int, float, bool or None, not %s", typeName(k))
}

func jsonFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	return pyFloatRepr(f)
}

func writeJSONString(b *strings.Builder, s string, ascii bool) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			switch {
			case r < 0x20 || (ascii && r == 0x7f):
				fmt.Fprintf(b, `\u%04x`, r)
			case ascii && r > 0x7f:
				if r > 0xffff {
					r -= 0x10000
					fmt.Fprintf(b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
				} else {
					fmt.Fprintf(b, `\u%04x`, r)
				}
			default:
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}

// tojsonOptions binds the filter's arguments in transformers' order:
// tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
func tojsonOptions(args []value, kw *dictVal) (jsonOpts, error) {
	a, err := bindArgs("tojson", args, kw, "ensure_ascii", "indent", "separators", "sort_keys")
	if err != nil {
		return jsonOpts{}, err
	}
	o := jsonOpts{ensureASCII: truthy(orDefault(a[0], false)), sortKeys: truthy(orDefault(a[3], false))}
	switch ind := orDefault(a[1], nil).(type) {
	case nil:
	case string:
		o.indent = &ind
	case int64, bool:
		n, _ := toNumber(ind)
		if n.i > 1000 {
			return o, fmt.Errorf("indent too large")
		}
		s := strings.Repeat(" ", int(max(n.i, 0)))
		o.indent = &s
	default:
		return o, fmt.Errorf("indent must be an int or str, not %s", typeName(ind))
	}
	o.itemSep, o.keySep = ", ", ": "
	if o.indent != nil {
		o.itemSep = ","
	}
	if seps := orDefault(a[2], nil); seps != nil {
		l, ok := seps.(*listVal)
		if !ok || len(l.items) != 2 {
			return o, fmt.Errorf("separators must be an (item_separator, key_separator) pair")
		}
		is, ok1 := l.items[0].(string)
		ks, ok2 := l.items[1].(string)
		if !ok1 || !ok2 {
			return o, fmt.Errorf("separators must be strings")
		}
		o.itemSep, o.keySep = is, ks
	}
	return o, nil
}
