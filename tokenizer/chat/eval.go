package chat

import (
	"errors"
	"fmt"
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

type evaluator struct {
	maxSteps int
	out      *strings.Builder
	written  int
	steps    int
	depth    int
	now      func() time.Time
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
