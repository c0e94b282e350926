package chat

import (
	"fmt"
	"strconv"
	"strings"
)

// The parser follows Jinja2's grammar and operator precedence (lowest first):
// conditional "x if c else y", or, and, not, comparisons (== != < <= > >= in
// "not in"), + -, ~, * / // %, **, unary - +, then postfix .attr [item]
// (call) and finally filters "|f" and tests "is t" which bind tightest of
// all, so `'a' + x | trim` trims only x.

type parser struct {
	names     map[string]int // name references parsed so far, for macros
	toks      []token
	pos       int
	depth     int
	loopDepth int // break/continue are only legal inside for bodies
}

func (p *parser) peek() token { return p.toks[p.pos] }
func (p *parser) peekN(n int) token {
	if p.pos+n < len(p.toks) {
		return p.toks[p.pos+n]
	}
	return p.toks[len(p.toks)-1]
}
func (p *parser) next() token {
	t := p.toks[p.pos]
	if t.kind != tEOF {
		p.pos++
	}
	return t
}

func (p *parser) errAt(t token, format string, args ...any) error {
	return &SyntaxError{Line: t.line, Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) isOp(op string) bool {
	t := p.peek()
	return t.kind == tOp && t.val == op
}

func (p *parser) isName(name string) bool {
	t := p.peek()
	return t.kind == tName && t.val == name
}

func (p *parser) expectOp(op string) error {
	if !p.isOp(op) {
		return p.errAt(p.peek(), "expected '%s', got %s", op, p.peek())
	}
	p.next()
	return nil
}

func (p *parser) expectName() (string, error) {
	t := p.peek()
	if t.kind != tName {
		return "", p.errAt(t, "expected a name, got %s", t)
	}
	p.next()
	return t.val, nil
}

func (p *parser) expectBlockEnd() error {
	if p.peek().kind != tBlockEnd {
		return p.errAt(p.peek(), "expected end of statement block, got %s", p.peek())
	}
	p.next()
	return nil
}

// enter bounds the recursion of the parser so hostile templates such as
// "((((((..." fail cleanly instead of exhausting the stack.
func (p *parser) enter() error {
	p.depth++
	if p.depth > maxDepth {
		return p.errAt(p.peek(), "template nested too deeply")
	}
	return nil
}

func (p *parser) leave() { p.depth-- }

func parseTemplate(src string) ([]node, error) {
	toks, err := lex(src)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks, names: map[string]int{}}
	body, end, err := p.parseBody()
	if err != nil {
		return nil, err
	}
	if end != "" {
		return nil, p.errAt(p.toks[p.pos-1], "unexpected '%s'", end)
	}
	return body, nil
}

// parseBody parses statements until EOF or a block tag whose keyword is in
// ends; that keyword is returned with the tag's "{%" and name consumed.
func (p *parser) parseBody(ends ...string) ([]node, string, error) {
	if err := p.enter(); err != nil {
		return nil, "", err
	}
	defer p.leave()
	var body []node
	for {
		t := p.next()
		switch t.kind {
		case tEOF:
			if len(ends) > 0 {
				return nil, "", p.errAt(t, "unexpected end of template, expected '%s'", strings.Join(ends, "' or '"))
			}
			return body, "", nil
		case tData:
			body = append(body, &textNode{text: t.val})
		case tVarBegin:
			e, err := p.parseTuple(true)
			if err != nil {
				return nil, "", err
			}
			if p.peek().kind != tVarEnd {
				return nil, "", p.errAt(p.peek(), "expected end of print statement, got %s", p.peek())
			}
			p.next()
			body = append(body, &outputNode{expr: e, line: t.line})
		case tBlockBegin:
			kw := p.peek()
			if kw.kind != tName {
				return nil, "", p.errAt(kw, "tag name expected")
			}
			for _, e := range ends {
				if kw.val == e {
					p.next()
					return body, e, nil
				}
			}
			n, err := p.parseStatement()
			if err != nil {
				return nil, "", err
			}
			if n != nil {
				body = append(body, n)
			}
		default:
			return nil, "", p.errAt(t, "unexpected %s", t)
		}
	}
}

func (p *parser) parseStatement() (node, error) {
	kw := p.next()
	switch kw.val {
	case "if":
		return p.parseIf()
	case "for":
		return p.parseFor(kw)
	case "set":
		return p.parseSet(kw)
	case "macro":
		return p.parseMacro()
	case "filter":
		return p.parseFilterBlock()
	case "with":
		return p.parseWith()
	case "generation":
		// transformers' {% generation %} only marks assistant spans for
		// masks; the text renders unchanged.
		if err := p.expectBlockEnd(); err != nil {
			return nil, err
		}
		body, _, err := p.parseBody("endgeneration")
		if err != nil {
			return nil, err
		}
		return &withNode{body: body}, p.expectBlockEnd()
	case "break", "continue":
		if p.loopDepth == 0 {
			return nil, p.errAt(kw, "'%s' outside of a loop", kw.val)
		}
		if err := p.expectBlockEnd(); err != nil {
			return nil, err
		}
		if kw.val == "break" {
			return &breakNode{}, nil
		}
		return &continueNode{}, nil
	}
	return nil, p.errAt(kw, "unknown or unsupported tag '%s'", kw.val)
}

func (p *parser) parseIf() (node, error) {
	n := &ifNode{}
	for {
		cond, err := p.parseTuple(false)
		if err != nil {
			return nil, err
		}
		if err := p.expectBlockEnd(); err != nil {
			return nil, err
		}
		body, end, err := p.parseBody("elif", "else", "endif")
		if err != nil {
			return nil, err
		}
		n.conds = append(n.conds, cond)
		n.bodies = append(n.bodies, body)
		switch end {
		case "elif":
			continue
		case "else":
			if err := p.expectBlockEnd(); err != nil {
				return nil, err
			}
			n.orelse, _, err = p.parseBody("endif")
			if err != nil {
				return nil, err
			}
		}
		return n, p.expectBlockEnd()
	}
}

func (p *parser) parseFor(kw token) (node, error) {
	n := &forNode{line: kw.line}
	target, err := p.parseAssignTarget(false)
	if err != nil {
		return nil, err
	}
	n.target = target
	if !p.isName("in") {
		return nil, p.errAt(p.peek(), "expected 'in', got %s", p.peek())
	}
	p.next()
	if n.iter, err = p.parseTuple(false); err != nil {
		return nil, err
	}
	if p.isName("if") {
		p.next()
		if n.filter, err = p.parseExpr(true); err != nil {
			return nil, err
		}
	}
	if p.isName("recursive") {
		p.next()
		n.recursive = true
	}
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	p.loopDepth++
	body, end, err := p.parseBody("else", "endfor")
	p.loopDepth--
	if err != nil {
		return nil, err
	}
	n.body = body
	if end == "else" {
		if err := p.expectBlockEnd(); err != nil {
			return nil, err
		}
		// The else body runs when nothing was iterated; break and continue
		// there belong to an outer loop, if any.
		saved := p.loopDepth
		if n.orelse, _, err = p.parseBody("endfor"); err != nil {
			return nil, err
		}
		p.loopDepth = saved
	}
	return n, p.expectBlockEnd()
}

// parseAssignTarget parses a name, "a, b" / "(a, b)" tuples, or (for set)
// the namespace attribute form "ns.attr".
func (p *parser) parseAssignTarget(allowAttr bool) (expr, error) {
	var names []expr
	paren := false
	if p.isOp("(") {
		paren = true
		p.next()
	}
	for {
		t := p.peek()
		name, err := p.expectName()
		if err != nil {
			return nil, err
		}
		if allowAttr && !paren && len(names) == 0 && p.isOp(".") {
			p.next()
			attr, err := p.expectName()
			if err != nil {
				return nil, err
			}
			return &attrExpr{obj: &nameExpr{name: name, line: t.line}, name: attr, line: t.line}, nil
		}
		switch name {
		case "true", "false", "none", "True", "False", "None":
			return nil, p.errAt(t, "can't assign to '%s'", name)
		}
		names = append(names, &nameExpr{name: name, line: t.line})
		if !p.isOp(",") {
			break
		}
		p.next()
		if p.peek().kind != tName {
			break
		}
	}
	if paren {
		if err := p.expectOp(")"); err != nil {
			return nil, err
		}
	}
	if len(names) == 1 && !paren {
		return names[0], nil
	}
	return &listExpr{items: names, tuple: true}, nil
}

func (p *parser) parseSet(kw token) (node, error) {
	target, err := p.parseAssignTarget(true)
	if err != nil {
		return nil, err
	}
	n := &setNode{target: target, line: kw.line}
	if p.isOp("=") {
		p.next()
		if n.value, err = p.parseTuple(true); err != nil {
			return nil, err
		}
		return n, p.expectBlockEnd()
	}
	// Block assignment, optionally filtered: {% set x | trim %}...{% endset %}
	for p.isOp("|") {
		p.next()
		f, err := p.parseFilter(nil)
		if err != nil {
			return nil, err
		}
		n.filter = append(n.filter, f)
	}
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	if n.body, _, err = p.parseBody("endset"); err != nil {
		return nil, err
	}
	if n.body == nil {
		n.body = []node{}
	}
	return n, p.expectBlockEnd()
}

func (p *parser) parseMacro() (node, error) {
	name, err := p.expectName()
	if err != nil {
		return nil, err
	}
	n := &macroNode{name: name}
	if err := p.expectOp("("); err != nil {
		return nil, err
	}
	for !p.isOp(")") {
		if len(n.params) > 0 {
			if err := p.expectOp(","); err != nil {
				return nil, err
			}
			if p.isOp(")") {
				break
			}
		}
		param, err := p.expectName()
		if err != nil {
			return nil, err
		}
		n.params = append(n.params, param)
		if p.isOp("=") {
			p.next()
			d, err := p.parseExpr(true)
			if err != nil {
				return nil, err
			}
			n.defaults = append(n.defaults, d)
		} else if len(n.defaults) > 0 {
			return nil, p.errAt(p.peek(), "non-default argument follows default argument")
		}
	}
	p.next()
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	saved := p.loopDepth
	p.loopDepth = 0
	va, kw := p.names["varargs"], p.names["kwargs"]
	n.body, _, err = p.parseBody("endmacro")
	p.loopDepth = saved
	// Like Jinja2, a macro accepts extra arguments only if its body
	// refers to varargs / kwargs.
	n.varargs, n.kwargs = p.names["varargs"] > va, p.names["kwargs"] > kw
	if err != nil {
		return nil, err
	}
	if p.peek().kind == tName {
		p.next() // {% endmacro name %}
	}
	return n, p.expectBlockEnd()
}

func (p *parser) parseFilterBlock() (node, error) {
	n := &filterBlockNode{}
	for {
		f, err := p.parseFilter(nil)
		if err != nil {
			return nil, err
		}
		n.filters = append(n.filters, f)
		if !p.isOp("|") {
			break
		}
		p.next()
	}
	if err := p.expectBlockEnd(); err != nil {
		return nil, err
	}
	var err error
	if n.body, _, err = p.parseBody("endfilter"); err != nil {
		return nil, err
	}
	return n, p.expectBlockEnd()
}

// parseWith turns {% with a=1, b=2 %}body{% endwith %} into a scoped block,
// represented as a one-iteration loop-free if with leading sets.
func (p *parser) parseWith() (node, error) {
	var sets []node
	for p.peek().kind != tBlockEnd {
		if len(sets) > 0 {
			if err := p.expectOp(","); err != nil {
				return nil, err
			}
		}
		t := p.peek()
		target, err := p.parseAssignTarget(false)
		if err != nil {
			return nil, err
		}
		if err := p.expectOp("="); err != nil {
			return nil, err
		}
		v, err := p.parseExpr(true)
		if err != nil {
			return nil, err
		}
		sets = append(sets, &setNode{target: target, value: v, line: t.line})
	}
	p.next()
	body, _, err := p.parseBody("endwith")
	if err != nil {
		return nil, err
	}
	return &withNode{body: append(sets, body...)}, p.expectBlockEnd()
}

// withNode runs its body in a child scope.
type withNode struct{ body []node }

// parseTuple parses an expression or a bare tuple "a, b".
func (p *parser) parseTuple(withCond bool) (expr, error) {
	first, err := p.parseExpr(withCond)
	if err != nil {
		return nil, err
	}
	if !p.isOp(",") {
		return first, nil
	}
	items := []expr{first}
	for p.isOp(",") {
		p.next()
		if !p.startsExpr() {
			break
		}
		e, err := p.parseExpr(withCond)
		if err != nil {
			return nil, err
		}
		items = append(items, e)
	}
	return &listExpr{items: items, tuple: true}, nil
}

func (p *parser) startsExpr() bool {
	t := p.peek()
	switch t.kind {
	case tName, tString, tInt, tFloat:
		return true
	case tOp:
		switch t.val {
		case "(", "[", "{", "-", "+":
			return true
		}
	}
	return false
}

func (p *parser) parseExpr(withCond bool) (expr, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	if !withCond {
		return p.parseOr()
	}
	e, err := p.parseOr()
	if err != nil {
		return nil, err
	}
	for p.isName("if") {
		p.next()
		cond, err := p.parseOr()
		if err != nil {
			return nil, err
		}
		c := &condExpr{cond: cond, yes: e}
		if p.isName("else") {
			p.next()
			if c.no, err = p.parseExpr(true); err != nil {
				return nil, err
			}
		}
		e = c
	}
	return e, nil
}

func (p *parser) parseOr() (expr, error) {
	l, err := p.parseAnd()
	for err == nil && p.isName("or") {
		t := p.next()
		var r expr
		if r, err = p.parseAnd(); err == nil {
			l = &binaryExpr{op: "or", l: l, r: r, line: t.line}
		}
	}
	return l, err
}

func (p *parser) parseAnd() (expr, error) {
	l, err := p.parseNot()
	for err == nil && p.isName("and") {
		t := p.next()
		var r expr
		if r, err = p.parseNot(); err == nil {
			l = &binaryExpr{op: "and", l: l, r: r, line: t.line}
		}
	}
	return l, err
}

func (p *parser) parseNot() (expr, error) {
	if p.isName("not") {
		t := p.next()
		if err := p.enter(); err != nil {
			return nil, err
		}
		defer p.leave()
		x, err := p.parseNot()
		return &unaryExpr{op: "not", x: x, line: t.line}, err
	}
	return p.parseCompare()
}

func (p *parser) parseCompare() (expr, error) {
	first, err := p.parseMath1()
	if err != nil {
		return nil, err
	}
	c := &compareExpr{first: first, line: p.peek().line}
	for {
		t := p.peek()
		var op string
		switch {
		case t.kind == tOp && (t.val == "==" || t.val == "!=" || t.val == "<" || t.val == "<=" || t.val == ">" || t.val == ">="):
			op = t.val
			p.next()
		case p.isName("in"):
			op = "in"
			p.next()
		case p.isName("not") && p.peekN(1).kind == tName && p.peekN(1).val == "in":
			op = "notin"
			p.next()
			p.next()
		}
		if op == "" {
			break
		}
		r, err := p.parseMath1()
		if err != nil {
			return nil, err
		}
		c.ops = append(c.ops, op)
		c.rest = append(c.rest, r)
	}
	if len(c.ops) == 0 {
		return first, nil
	}
	return c, nil
}

func (p *parser) parseBinary(ops []string, sub func() (expr, error)) (expr, error) {
	l, err := sub()
	if err != nil {
		return nil, err
	}
	for {
		t := p.peek()
		matched := false
		for _, op := range ops {
			if t.kind == tOp && t.val == op {
				matched = true
			}
		}
		if !matched {
			return l, nil
		}
		p.next()
		r, err := sub()
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{op: t.val, l: l, r: r, line: t.line}
	}
}

func (p *parser) parseMath1() (expr, error) {
	return p.parseBinary([]string{"+", "-"}, p.parseConcat)
}

func (p *parser) parseConcat() (expr, error) {
	return p.parseBinary([]string{"~"}, p.parseMath2)
}

func (p *parser) parseMath2() (expr, error) {
	return p.parseBinary([]string{"*", "/", "//", "%"}, p.parsePow)
}

func (p *parser) parsePow() (expr, error) {
	return p.parseBinary([]string{"**"}, func() (expr, error) { return p.parseUnary(true) })
}

func (p *parser) parseUnary(withFilter bool) (expr, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	t := p.peek()
	var e expr
	var err error
	if t.kind == tOp && (t.val == "-" || t.val == "+") {
		p.next()
		x, err := p.parseUnary(false)
		if err != nil {
			return nil, err
		}
		e = &unaryExpr{op: t.val, x: x, line: t.line}
	} else if e, err = p.parsePrimary(); err != nil {
		return nil, err
	}
	if e, err = p.parsePostfix(e); err != nil {
		return nil, err
	}
	if withFilter {
		return p.parseFilterExpr(e)
	}
	return e, nil
}

func (p *parser) parsePrimary() (expr, error) {
	t := p.next()
	switch t.kind {
	case tName:
		switch t.val {
		case "true", "True":
			return &constExpr{val: true}, nil
		case "false", "False":
			return &constExpr{val: false}, nil
		case "none", "None":
			return &constExpr{val: nil}, nil
		}
		p.names[t.val]++
		return &nameExpr{name: t.val, line: t.line}, nil
	case tString:
		s := t.val
		for p.peek().kind == tString {
			s += p.next().val
		}
		return &constExpr{val: s}, nil
	case tInt:
		i, err := strconv.ParseInt(t.val, 10, 64)
		if err != nil {
			return nil, p.errAt(t, "integer literal %s out of range", t.val)
		}
		return &constExpr{val: i}, nil
	case tFloat:
		f, err := strconv.ParseFloat(t.val, 64)
		if err != nil {
			return nil, p.errAt(t, "bad float literal %s", t.val)
		}
		return &constExpr{val: f}, nil
	case tOp:
		switch t.val {
		case "(":
			if p.isOp(")") {
				p.next()
				return &listExpr{tuple: true}, nil
			}
			e, err := p.parseExpr(true)
			if err != nil {
				return nil, err
			}
			if p.isOp(",") {
				items := []expr{e}
				for p.isOp(",") {
					p.next()
					if p.isOp(")") {
						break
					}
					x, err := p.parseExpr(true)
					if err != nil {
						return nil, err
					}
					items = append(items, x)
				}
				e = &listExpr{items: items, tuple: true}
			}
			return e, p.expectOp(")")
		case "[":
			items, err := p.parseSeq("]")
			return &listExpr{items: items}, err
		case "{":
			d := &dictExpr{}
			for !p.isOp("}") {
				if len(d.keys) > 0 {
					if err := p.expectOp(","); err != nil {
						return nil, err
					}
					if p.isOp("}") {
						break
					}
				}
				k, err := p.parseExpr(true)
				if err != nil {
					return nil, err
				}
				if err := p.expectOp(":"); err != nil {
					return nil, err
				}
				v, err := p.parseExpr(true)
				if err != nil {
					return nil, err
				}
				d.keys = append(d.keys, k)
				d.vals = append(d.vals, v)
			}
			p.next()
			return d, nil
		}
	}
	return nil, p.errAt(t, "unexpected %s", t)
}

// parseSeq parses comma separated expressions up to the closing operator.
func (p *parser) parseSeq(closer string) ([]expr, error) {
	var items []expr
	for !p.isOp(closer) {
		if len(items) > 0 {
			if err := p.expectOp(","); err != nil {
				return nil, err
			}
			if p.isOp(closer) {
				break
			}
		}
		e, err := p.parseExpr(true)
		if err != nil {
			return nil, err
		}
		items = append(items, e)
	}
	p.next()
	return items, nil
}

func (p *parser) parsePostfix(e expr) (expr, error) {
	for {
		t := p.peek()
		switch {
		case t.kind == tOp && t.val == ".":
			p.next()
			n := p.next()
			switch n.kind {
			case tName:
				e = &attrExpr{obj: e, name: n.val, line: n.line}
			case tInt:
				i, _ := strconv.ParseInt(n.val, 10, 64)
				e = &itemExpr{obj: e, key: &constExpr{val: i}, line: n.line}
			default:
				return nil, p.errAt(n, "expected name or number after '.'")
			}
		case t.kind == tOp && t.val == "[":
			p.next()
			var keys []expr
			for !p.isOp("]") {
				if len(keys) > 0 {
					if err := p.expectOp(","); err != nil {
						return nil, err
					}
					if p.isOp("]") {
						break
					}
				}
				k, err := p.parseSubscribed()
				if err != nil {
					return nil, err
				}
				keys = append(keys, k)
			}
			p.next()
			switch len(keys) {
			case 0:
				return nil, p.errAt(t, "expected subscript expression")
			case 1:
				e = &itemExpr{obj: e, key: keys[0], line: t.line}
			default:
				e = &itemExpr{obj: e, key: &listExpr{items: keys, tuple: true}, line: t.line}
			}
		case t.kind == tOp && t.val == "(":
			c, err := p.parseCall(e)
			if err != nil {
				return nil, err
			}
			e = c
		default:
			return e, nil
		}
	}
}

func (p *parser) parseSubscribed() (expr, error) {
	var parts [3]expr
	var err error
	if !p.isOp(":") {
		if parts[0], err = p.parseExpr(true); err != nil {
			return nil, err
		}
		if !p.isOp(":") {
			return parts[0], nil
		}
	}
	p.next() // first ':'
	if !p.isOp("]") && !p.isOp(",") && !p.isOp(":") {
		if parts[1], err = p.parseExpr(true); err != nil {
			return nil, err
		}
	}
	if p.isOp(":") {
		p.next()
		if !p.isOp("]") && !p.isOp(",") {
			if parts[2], err = p.parseExpr(true); err != nil {
				return nil, err
			}
		}
	}
	return &sliceExpr{start: parts[0], stop: parts[1], step: parts[2]}, nil
}

func (p *parser) parseCall(fn expr) (*callExpr, error) {
	t := p.next() // (
	c := &callExpr{fn: fn, line: t.line}
	args, kwargs, err := p.parseCallArgs()
	c.args, c.kwargs = args, kwargs
	return c, err
}

// parseCallArgs parses "a, b, k=v)" after an opening parenthesis.
func (p *parser) parseCallArgs() ([]expr, []kwarg, error) {
	var args []expr
	var kwargs []kwarg
	for !p.isOp(")") {
		if len(args)+len(kwargs) > 0 {
			if err := p.expectOp(","); err != nil {
				return nil, nil, err
			}
			if p.isOp(")") {
				break
			}
		}
		if p.peek().kind == tName && p.peekN(1).kind == tOp && p.peekN(1).val == "=" {
			name := p.next().val
			p.next()
			v, err := p.parseExpr(true)
			if err != nil {
				return nil, nil, err
			}
			kwargs = append(kwargs, kwarg{name: name, val: v})
			continue
		}
		if p.isOp("*") || p.isOp("**") {
			return nil, nil, p.errAt(p.peek(), "*args and **kwargs in calls are not supported")
		}
		if len(kwargs) > 0 {
			return nil, nil, p.errAt(p.peek(), "positional argument follows keyword argument")
		}
		v, err := p.parseExpr(true)
		if err != nil {
			return nil, nil, err
		}
		args = append(args, v)
	}
	p.next()
	return args, kwargs, nil
}

func (p *parser) parseFilterExpr(e expr) (expr, error) {
	for {
		switch {
		case p.isOp("|"):
			p.next()
			f, err := p.parseFilter(e)
			if err != nil {
				return nil, err
			}
			e = f
		case p.isName("is"):
			p.next()
			t, err := p.parseTest(e)
			if err != nil {
				return nil, err
			}
			e = t
		case p.isOp("("):
			c, err := p.parseCall(e)
			if err != nil {
				return nil, err
			}
			e = c
		default:
			return e, nil
		}
	}
}

// dottedName reads "name" or "name.sub" as filters and tests allow.
func (p *parser) dottedName() (string, token, error) {
	t := p.peek()
	name, err := p.expectName()
	if err != nil {
		return "", t, err
	}
	for p.isOp(".") && p.peekN(1).kind == tName {
		p.next()
		name += "." + p.next().val
	}
	return name, t, nil
}

func (p *parser) parseFilter(arg expr) (*filterExpr, error) {
	name, t, err := p.dottedName()
	if err != nil {
		return nil, err
	}
	// Like Jinja2, unknown filters and tests fail at compile time.
	if _, ok := filters[name]; !ok {
		return nil, p.errAt(t, "no filter named '%s'", name)
	}
	f := &filterExpr{arg: arg, name: name, line: t.line}
	if p.isOp("(") {
		p.next()
		if f.args, f.kwargs, err = p.parseCallArgs(); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func (p *parser) parseTest(arg expr) (expr, error) {
	negate := false
	if p.isName("not") {
		p.next()
		negate = true
	}
	name, t, err := p.dottedName()
	if err != nil {
		return nil, err
	}
	if _, ok := tests[name]; !ok {
		return nil, p.errAt(t, "no test named '%s'", name)
	}
	te := &testExpr{arg: arg, name: name, negate: negate, line: t.line}
	nt := p.peek()
	switch {
	case p.isOp("("):
		p.next()
		if te.args, te.kwargs, err = p.parseCallArgs(); err != nil {
			return nil, err
		}
	case (nt.kind == tName || nt.kind == tString || nt.kind == tInt || nt.kind == tFloat ||
		p.isOp("[") || p.isOp("{")) && !p.isName("else") && !p.isName("or") && !p.isName("and"):
		if p.isName("is") {
			return nil, p.errAt(nt, "you cannot chain multiple tests with is")
		}
		a, err := p.parsePrimary()
		if err != nil {
			return nil, err
		}
		if a, err = p.parsePostfix(a); err != nil {
			return nil, err
		}
		te.args = []expr{a}
	}
	return te, nil
}
