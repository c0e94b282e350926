package chat

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// globals are the functions transformers and Jinja2 make available to every
// chat template.
var globals map[string]value

func init() {
	globals = map[string]value{
		"range":           &callable{name: "range", fn: builtinRange},
		"namespace":       &callable{name: "namespace", fn: builtinNamespace},
		"dict":            &callable{name: "dict", fn: builtinDict},
		"raise_exception": &callable{name: "raise_exception", fn: builtinRaise},
		"strftime_now":    &callable{name: "strftime_now", fn: builtinStrftimeNow},
	}
}

func builtinRange(_ *evaluator, args []value, _ *dictVal) (value, error) {
	var b [3]int64
	b[2] = 1
	for i, a := range args {
		n, ok := toNumber(a)
		if !ok || !n.isInt {
			return nil, fmt.Errorf("'%s' object cannot be interpreted as an integer", typeName(a))
		}
		b[i] = n.i
	}
	var start, stop, step int64
	switch len(args) {
	case 1:
		start, stop, step = 0, b[0], 1
	case 2:
		start, stop, step = b[0], b[1], 1
	case 3:
		start, stop, step = b[0], b[1], b[2]
	default:
		return nil, fmt.Errorf("range expected 1 to 3 arguments, got %d", len(args))
	}
	if step == 0 {
		return nil, errors.New("range() arg 3 must not be zero")
	}
	var items []value
	for i := start; (step > 0 && i < stop) || (step < 0 && i > stop); i += step {
		if len(items) >= maxRange {
			return nil, fmt.Errorf("range too big, maximum size for range is %d", maxRange)
		}
		items = append(items, i)
	}
	return newList(items), nil
}

func builtinNamespace(_ *evaluator, args []value, kw *dictVal) (value, error) {
	ns := &namespace{attrs: newDict()}
	for _, a := range args {
		d, ok := a.(*dictVal)
		if !ok {
			return nil, fmt.Errorf("namespace() argument must be a mapping, not %s", typeName(a))
		}
		for i, k := range d.keys {
			_ = ns.attrs.set(k, d.vals[i])
		}
	}
	for i, k := range kw.keys {
		_ = ns.attrs.set(k, kw.vals[i])
	}
	return ns, nil
}

func builtinDict(_ *evaluator, args []value, kw *dictVal) (value, error) {
	d := newDict()
	for _, a := range args {
		src, ok := a.(*dictVal)
		if !ok {
			return nil, fmt.Errorf("dict() argument must be a mapping, not %s", typeName(a))
		}
		for i, k := range src.keys {
			_ = d.set(k, src.vals[i])
		}
	}
	for i, k := range kw.keys {
		_ = d.set(k, kw.vals[i])
	}
	return d, nil
}

func builtinRaise(_ *evaluator, args []value, kw *dictVal) (value, error) {
	msg := ""
	if len(args) > 0 {
		msg = toStr(args[0])
	} else if v, ok := kw.get("message"); ok {
		msg = toStr(v)
	}
	return nil, &TemplateError{Msg: msg}
}

func builtinStrftimeNow(ev *evaluator, args []value, _ *dictVal) (value, error) {
	if len(args) != 1 {
		return nil, errors.New("strftime_now() takes exactly one argument")
	}
	f, ok := args[0].(string)
	if !ok {
		return nil, errors.New("strftime_now() argument must be str")
	}
	now := time.Now()
	if ev.now != nil {
		now = ev.now()
	}
	return strftime(now, f), nil
}

// strftime implements the C/Python directives chat templates use for dates
// (Llama 3.1 uses "%d %b %Y"); unknown directives are copied through.
func strftime(t time.Time, f string) string {
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		if f[i] != '%' || i+1 == len(f) {
			b.WriteByte(f[i])
			continue
		}
		i++
		switch f[i] {
		case 'd':
			fmt.Fprintf(&b, "%02d", t.Day())
		case 'e':
			fmt.Fprintf(&b, "%2d", t.Day())
		case 'm':
			fmt.Fprintf(&b, "%02d", int(t.Month()))
		case 'Y':
			fmt.Fprintf(&b, "%d", t.Year())
		case 'y':
			fmt.Fprintf(&b, "%02d", t.Year()%100)
		case 'B':
			b.WriteString(t.Month().String())
		case 'b', 'h':
			b.WriteString(t.Month().String()[:3])
		case 'A':
			b.WriteString(t.Weekday().String())
		case 'a':
			b.WriteString(t.Weekday().String()[:3])
		case 'H':
			fmt.Fprintf(&b, "%02d", t.Hour())
		case 'I':
			h := t.Hour() % 12
			if h == 0 {
				h = 12
			}
			fmt.Fprintf(&b, "%02d", h)
		case 'M':
			fmt.Fprintf(&b, "%02d", t.Minute())
		case 'S':
			fmt.Fprintf(&b, "%02d", t.Second())
		case 'p':
			if t.Hour() < 12 {
				b.WriteString("AM")
			} else {
				b.WriteString("PM")
			}
		case 'j':
			fmt.Fprintf(&b, "%03d", t.YearDay())
		case 'f':
			fmt.Fprintf(&b, "%06d", t.Nanosecond()/1000)
		case 'z':
			b.WriteString(t.Format("-0700"))
		case 'Z':
			b.WriteString(t.Format("MST"))
		case 'F':
			b.WriteString(t.Format("2006-01-02"))
		case 'T':
			b.WriteString(t.Format("15:04:05"))
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(f[i])
		}
	}
	return b.String()
}
