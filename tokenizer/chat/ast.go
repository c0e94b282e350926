package chat

// Statement nodes. A template is a list of them.
type node interface{}

type (
	textNode   struct{ text string }
	outputNode struct {
		expr expr
		line int
	}
	ifNode struct {
		conds  []expr // if, elif...
		bodies [][]node
		orelse []node
	}
	forNode struct {
		target    expr // name or tuple of names
		iter      expr
		filter    expr // optional "if" clause
		body      []node
		orelse    []node
		recursive bool
		line      int
	}
	setNode struct {
		target expr // name, tuple of names, or attr (namespace assignment)
		value  expr
		body   []node // block set: {% set x %}...{% endset %}
		filter []*filterExpr
		line   int
	}
	macroNode struct {
		name     string
		params   []string
		defaults []expr // aligned to the tail of params
		body     []node
		varargs  bool // body uses varargs: extra positional arguments allowed
		kwargs   bool // body uses kwargs: extra keyword arguments allowed
	}
	filterBlockNode struct {
		filters []*filterExpr
		body    []node
	}
	breakNode    struct{}
	continueNode struct{}
)

// Expression nodes.
type expr interface{}

type (
	constExpr struct{ val value }
	nameExpr  struct {
		name string
		line int
	}
	listExpr struct {
		items []expr
		tuple bool
	}
	dictExpr struct{ keys, vals []expr }
	attrExpr struct {
		obj  expr
		name string
		line int
	}
	itemExpr struct {
		obj, key expr
		line     int
	}
	sliceExpr struct{ start, stop, step expr }
	callExpr  struct {
		fn     expr
		args   []expr
		kwargs []kwarg
		line   int
	}
	kwarg struct {
		name string
		val  expr
	}
	filterExpr struct {
		arg    expr // nil inside filter blocks and set-block filters
		name   string
		args   []expr
		kwargs []kwarg
		line   int
	}
	testExpr struct {
		arg    expr
		name   string
		args   []expr
		kwargs []kwarg
		negate bool
		line   int
	}
	unaryExpr struct {
		op   string // "not", "-", "+"
		x    expr
		line int
	}
	binaryExpr struct {
		op   string // + - * / // % ** ~ and or
		l, r expr
		line int
	}
	compareExpr struct {
		first expr
		ops   []string // == != < <= > >= in notin
		rest  []expr
		line  int
	}
	condExpr struct {
		cond, yes, no expr // no may be nil
	}
)
