package chat

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
)

// Limits that keep rendering of untrusted templates and messages bounded.
const (
	maxDepth     = 200      // parser nesting, value nesting, repr depth
	maxCallDepth = 100      // macro recursion
	maxSteps     = 3000000  // evaluation steps; a 2000-message Qwen3 chat takes ~165k
	maxOutput    = 16 << 20 // bytes of rendered output and of any one string (~4M tokens)
	maxRange     = 100000   // like Jinja2's sandbox MAX_RANGE
	maxListLen   = 1 << 20  // items in any one list built by a template
	// Building values costs steps in proportion to their size, so a loop
	// that copies a huge string each iteration runs out of steps quickly.
	bytesPerStep = 64
	itemsPerStep = 16
)

// TemplateError is what a template raises through raise_exception(msg);
// Msg is the template's message verbatim.
type TemplateError struct{ Msg string }

func (e *TemplateError) Error() string { return e.Msg }

// RenderError is a runtime failure (type errors, undefined values used in
// arithmetic, limits hit) with the template line it happened on.
type RenderError struct {
	Line int
	Msg  string
}

func (e *RenderError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("chat template: line %d: %s", e.Line, e.Msg)
	}
	return "chat template: " + e.Msg
}

var (
	// Python ints are unbounded; int64 results that would wrap are refused
	// rather than silently wrong.
	errOverflow = errors.New("integer overflow (beyond 64-bit range)")
	errBreak    = errors.New("break")
	errContinue = errors.New("continue")
)

// scope holds the variables of one level: the template, a for-loop
// iteration, a macro call. Most hold a handful of names, so they live in a
// small slice; this keeps per-iteration scopes cheap.
type scope struct {
	inline [4]binding
	n      int       // used entries of inline
	more   []binding // beyond the first four
	parent *scope
}

type binding struct {
	name string
	val  value
}

func newScope(parent *scope) *scope { return &scope{parent: parent} }

func (s *scope) set(name string, v value) {
	for i := 0; i < s.n; i++ {
		if s.inline[i].name == name {
			s.inline[i].val = v
			return
		}
	}
	for i := range s.more {
		if s.more[i].name == name {
			s.more[i].val = v
			return
		}
	}
	if s.n < len(s.inline) {
		s.inline[s.n] = binding{name, v}
		s.n++
		return
	}
	s.more = append(s.more, binding{name, v})
}

// local reports a variable of this level only.
func (s *scope) local(name string) (value, bool) {
	for i := 0; i < s.n; i++ {
		if s.inline[i].name == name {
			return s.inline[i].val, true
		}
	}
	for i := range s.more {
		if s.more[i].name == name {
			return s.more[i].val, true
		}
	}
	return nil, false
}

func (s *scope) lookup(name string) (value, bool) {
	for ; s != nil; s = s.parent {
		if v, ok := s.local(name); ok {
			return v, true
		}
	}
	return nil, false
}

type evaluator struct {
	maxSteps int
	out      *strings.Builder
	written  int
	steps    int
	depth    int
	now      func() time.Time
}

// errorf builds a RenderError; an error that already is one keeps its line.
func errorf(line int, format string, args ...any) error {
	return &RenderError{Line: line, Msg: fmt.Sprintf(format, args...)}
}

func withLine(err error, line int) error {
	var re *RenderError
	if errors.As(err, &re) || err == errBreak || err == errContinue {
		return err
	}
	var te *TemplateError
	if errors.As(err, &te) {
		return err
	}
	return &RenderError{Line: line, Msg: err.Error()}
}

func (ev *evaluator) step() error {
	ev.steps++
	if ev.steps > ev.maxSteps {
		return &RenderError{Msg: "template exceeded the evaluation step limit"}
	}
	return nil
}

func (ev *evaluator) write(s string) error {
	ev.written += len(s)
	if ev.written > maxOutput {
		return &RenderError{Msg: "rendered output too large"}
	}
	ev.out.WriteString(s)
	return nil
}

// checkLen rejects strings and lists that would grow past the output limit,
// so doubling tricks like "{% set s = s + s %}" stop early.
func checkLen(n int) error {
	if n > maxOutput {
		return errors.New("value too large")
	}
	return nil
}

// capture renders body into a fresh buffer and returns the text.
func (ev *evaluator) capture(body []node, sc *scope) (string, error) {
	saved := ev.out
	var b strings.Builder
	ev.out = &b
	err := ev.execBody(body, sc)
	ev.out = saved
	return b.String(), err
}

func (ev *evaluator) eval(e expr, sc *scope) (value, error) {
	if err := ev.step(); err != nil {
		return nil, err
	}
	switch e.(type) {
	case *constExpr, *nameExpr, *attrExpr, *testExpr, *compareExpr, *condExpr, *unaryExpr:
		return ev.evalExpr(e, sc)
	}
	// Everything else may build a new string or list: charge for its size.
	v, err := ev.evalExpr(e, sc)
	if err != nil {
		return nil, err
	}
	switch x := v.(type) {
	case string:
		ev.steps += len(x) / bytesPerStep
	case *listVal:
		ev.steps += len(x.items) / itemsPerStep
	}
	return v, ev.step()
}

func (ev *evaluator) evalExpr(e expr, sc *scope) (value, error) {
	switch e := e.(type) {
	case *constExpr:
		return e.val, nil
	case *nameExpr:
		if v, ok := sc.lookup(e.name); ok {
			return v, nil
		}
		if v, ok := globals[e.name]; ok {
			return v, nil
		}
		return undefined{hint: fmt.Sprintf("'%s' is undefined", e.name)}, nil
	case *listExpr:
		items := make([]value, len(e.items))
		for i, it := range e.items {
			v, err := ev.eval(it, sc)
			if err != nil {
				return nil, err
			}
			items[i] = v
		}
		return &listVal{items: items, tuple: e.tuple}, nil
	case *dictExpr:
		d := newDict()
		for i := range e.keys {
			k, err := ev.eval(e.keys[i], sc)
			if err != nil {
				return nil, err
			}
			v, err := ev.eval(e.vals[i], sc)
			if err != nil {
				return nil, err
			}
			if err := d.set(k, v); err != nil {
				return nil, err
			}
		}
		return d, nil
	case *attrExpr:
		obj, err := ev.eval(e.obj, sc)
		if err != nil {
			return nil, err
		}
		v, err := getAttr(obj, e.name)
		return v, withLineIf(err, e.line)
	case *itemExpr:
		obj, err := ev.eval(e.obj, sc)
		if err != nil {
			return nil, err
		}
		if s, ok := e.key.(*sliceExpr); ok {
			v, err := ev.evalSlice(obj, s, sc)
			return v, withLineIf(err, e.line)
		}
		key, err := ev.eval(e.key, sc)
		if err != nil {
			return nil, err
		}
		v, err := getItem(obj, key)
		return v, withLineIf(err, e.line)
	case *callExpr:
		return ev.evalCall(e, sc)
	case *filterExpr:
		arg, err := ev.eval(e.arg, sc)
		if err != nil {
			return nil, err
		}
		return ev.applyFilter(e, arg, sc)
	case *testExpr:
		return ev.evalTest(e, sc)
	case *unaryExpr:
		x, err := ev.eval(e.x, sc)
		if err != nil {
			return nil, err
		}
		v, err := unaryOp(e.op, x)
		return v, withLineIf(err, e.line)
	case *binaryExpr:
		return ev.evalBinary(e, sc)
	case *compareExpr:
		l, err := ev.eval(e.first, sc)
		if err != nil {
			return nil, err
		}
		for i, op := range e.ops {
			r, err := ev.eval(e.rest[i], sc)
			if err != nil {
				return nil, err
			}
			ok, err := compareOp(op, l, r)
			if err != nil {
				return nil, withLine(err, e.line)
			}
			if !ok {
				return false, nil
			}
			l = r
		}
		return true, nil
	case *condExpr:
		c, err := ev.eval(e.cond, sc)
		if err != nil {
			return nil, err
		}
		if truthy(c) {
			return ev.eval(e.yes, sc)
		}
		if e.no == nil {
			return undefined{hint: "the inline if-expression evaluated to false and no else section was defined"}, nil
		}
		return ev.eval(e.no, sc)
	}
	return nil, fmt.Errorf("unknown expression %T", e)
}

func withLineIf(err error, line int) error {
	if err == nil {
		return nil
	}
	return withLine(err, line)
}

func (ev *evaluator) evalBinary(e *binaryExpr, sc *scope) (value, error) {
	l, err := ev.eval(e.l, sc)
	if err != nil {
		return nil, err
	}
	// and/or short-circuit and return an operand, as in Python.
	switch e.op {
	case "and":
		if !truthy(l) {
			return l, nil
		}
		return ev.eval(e.r, sc)
	case "or":
		if truthy(l) {
			return l, nil
		}
		return ev.eval(e.r, sc)
	}
	r, err := ev.eval(e.r, sc)
	if err != nil {
		return nil, err
	}
	v, err := binaryOp(e.op, l, r)
	return v, withLineIf(err, e.line)
}

func (ev *evaluator) evalSlice(obj value, s *sliceExpr, sc *scope) (value, error) {
	var bounds [3]value
	for i, x := range []expr{s.start, s.stop, s.step} {
		if x == nil {
			continue
		}
		v, err := ev.eval(x, sc)
		if err != nil {
			return nil, err
		}
		bounds[i] = v
	}
	return sliceValue(obj, bounds[0], bounds[1], bounds[2])
}

func (ev *evaluator) evalArgs(args []expr, kwargs []kwarg, sc *scope) ([]value, *dictVal, error) {
	vals := make([]value, len(args))
	for i, a := range args {
		v, err := ev.eval(a, sc)
		if err != nil {
			return nil, nil, err
		}
		vals[i] = v
	}
	kw := newDict()
	for _, k := range kwargs {
		v, err := ev.eval(k.val, sc)
		if err != nil {
			return nil, nil, err
		}
		kw.setStr(k.name, v)
	}
	return vals, kw, nil
}

func (ev *evaluator) evalCall(e *callExpr, sc *scope) (value, error) {
	fn, err := ev.eval(e.fn, sc)
	if err != nil {
		return nil, err
	}
	args, kw, err := ev.evalArgs(e.args, e.kwargs, sc)
	if err != nil {
		return nil, err
	}
	v, err := ev.call(fn, args, kw)
	return v, withLineIf(err, e.line)
}

func (ev *evaluator) call(fn value, args []value, kw *dictVal) (value, error) {
	switch f := fn.(type) {
	case *callable:
		return f.fn(ev, args, kw)
	case undefined:
		return nil, errors.New(f.errMsg())
	case *loopInfo:
		if f.recurse != nil && len(args) == 1 {
			return f.recurse(ev, args[0])
		}
		return nil, errors.New("loop() can only be called in recursive loops, with one argument")
	}
	return nil, fmt.Errorf("'%s' object is not callable", typeName(fn))
}

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
		for i := int64(0); i < cnt; i++ {
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
