package chat

import (
	"fmt"
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
