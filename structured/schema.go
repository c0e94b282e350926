package structured

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// The JSON the constraints produce is compact (no whitespace between tokens), as vLLM's
// guided decoding does by default: a grammar that allowed free whitespace would let a model
// pad forever.
const (
	// AnyJSONDepth is how deep values nest where a schema leaves them free (json_object, a
	// schema without a type): an object or array AnyJSONDepth levels down holds scalars only.
	AnyJSONDepth = 3
	// MaxRepeat bounds maxLength, minLength, maxItems and minItems (each is unrolled).
	MaxRepeat = 1000
	// MaxNumberDigits bounds the digits of the integer part and the fraction of a number a
	// schema types (integer, number), so that a model cannot write one forever and it fits a
	// float64; exponents have at most 2 digits.
	MaxNumberDigits = 16
)

// Bounded digit runs are written out ([0-9]? repeated) rather than as {m,n}: RE2 refuses
// nested repeats whose counts multiply past 1000, and a number inside an array with maxItems
// would otherwise count against it.
var (
	hex4      = `[0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F]`
	reChar    = `(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u` + hex4 + `)`
	reString  = `"` + reChar + `*"`
	reInteger = `-?(?:0|[1-9]` + strings.Repeat(`[0-9]?`, MaxNumberDigits-1) + `)`
	reNumber  = reInteger + `(?:\.[0-9]` + strings.Repeat(`[0-9]?`, MaxNumberDigits-1) + `)?(?:[eE][+-]?[0-9][0-9]?)?`
	// reAnyNumber is a number where a schema leaves values free: unbounded digits keep the
	// DFA of nested free values small (bounded digits multiply its states).
	reAnyNumber = `-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9][0-9]?)?`
)

// AnyJSONObjectRegex is the regular expression of json_object: any JSON object, values nested
// at most AnyJSONDepth levels.
func AnyJSONObjectRegex() string { return anyObject(AnyJSONDepth) }

func anyScalar() string { return `(?:` + reString + `|` + reAnyNumber + `|true|false|null)` }

func anyValue(depth int) string {
	if depth <= 0 {
		return anyScalar()
	}
	return `(?:` + anyScalar() + `|` + anyObject(depth) + `|` + anyArray(depth) + `)`
}

func anyObject(depth int) string {
	v := anyValue(depth - 1)
	m := reString + `:` + v
	return `\{(?:` + m + `(?:,` + m + `)*)?\}`
}

func anyArray(depth int) string {
	v := anyValue(depth - 1)
	return `\[(?:` + v + `(?:,` + v + `)*)?\]`
}

// annotations are schema keywords that describe and never constrain: they are accepted and
// have no effect on the output.
var annotations = map[string]bool{"title": true, "description": true, "$schema": true, "$id": true,
	"$comment": true, "examples": true, "default": true, "deprecated": true, "readOnly": true, "writeOnly": true}

// schemaRegex translates a JSON schema into the regular expression of its compact JSON
// instances. Supported: type (one or a list), properties (emitted in the schema's order),
// required, additionalProperties (false, or true/absent: only the listed properties are
// written), items, minItems, maxItems, minLength, maxLength, enum, const, anyOf, local $ref to
// $defs, definitions or the root, and boolean schemas. Any other keyword is an
// UnsupportedError naming it; a schema over a limit is a LimitError. A schema whose $refs reach themselves has no
// regular expression: its error is a *recursiveRefError. With rules (a recursive schema,
// schemacfg.go) it is the regular expression of the schema's top level in which each $ref is
// a placeholder for its rule in rules; key and label name the schema's refs there (a sequence
// item's index and name).
func schemaRegex(schema []byte, rules *schemaRules, key, label string) (string, error) {
	if len(schema) > MaxSpecBytes {
		return "", &LimitError{Limit: "MaxSpecBytes", Msg: fmt.Sprintf("the schema has %d bytes, more than %d", len(schema), MaxSpecBytes)}
	}
	root, err := parseOrdered(schema)
	if err != nil {
		return "", fmt.Errorf("invalid JSON schema: %w", err)
	}
	g := &schemaGen{root: root, rules: rules, key: key, label: label}
	return g.gen(root, 0)
}

type schemaGen struct {
	root  any
	refs  []string // the $ref chain being expanded (recursion check)
	bytes int      // regex bytes produced so far
	// rules, when set, receives each $ref's target as a rule of a context-free grammar
	// (the walk writes a placeholder where the regex would expand it); key and label name
	// this schema's refs there.
	rules      *schemaRules
	key, label string
}

// recursiveRefError is a $ref reached again while it is being expanded: the schema is
// recursive, and compiles to a context-free grammar instead of a regular expression.
type recursiveRefError struct{ ref string }

func (e *recursiveRefError) Error() string {
	return fmt.Sprintf("recursive schema $ref %q has no regular expression (it compiles to a grammar)", e.ref)
}

func (g *schemaGen) grow(s string) (string, error) {
	g.bytes += len(s)
	if g.bytes > MaxRegexBytes {
		return "", &LimitError{Limit: "MaxRegexBytes", Msg: fmt.Sprintf("the schema expands to more than %d bytes of regular expression", MaxRegexBytes)}
	}
	return s, nil
}

func (g *schemaGen) gen(node any, depth int) (string, error) {
	if depth > MaxSchemaDepth {
		return "", &LimitError{Limit: "MaxSchemaDepth", Msg: fmt.Sprintf("the schema nests deeper than %d levels", MaxSchemaDepth)}
	}
	switch s := node.(type) {
	case bool:
		if s {
			return g.grow(anyValue(AnyJSONDepth))
		}
		return "", fmt.Errorf("conflicting schema: false matches nothing")
	case *object:
		return g.genObject(s, depth)
	}
	return "", fmt.Errorf("invalid JSON schema: a schema must be an object or a boolean")
}

func (g *schemaGen) genObject(s *object, depth int) (string, error) {
	for _, k := range s.keys {
		switch {
		case annotations[k]:
		case k == "$defs" || k == "definitions":
			if depth != 0 {
				return "", &UnsupportedError{What: k, Msg: fmt.Sprintf("schema keyword %q is supported at the root only", k)}
			}
		case slices.Contains([]string{"type", "properties", "required", "additionalProperties", "items", "minItems",
			"maxItems", "minLength", "maxLength", "enum", "const", "anyOf", "$ref"}, k):
		default:
			return "", &UnsupportedError{What: k, Msg: fmt.Sprintf("schema keyword %q is not supported", k)}
		}
	}
	if ref, ok := s.vals["$ref"]; ok {
		if len(s.keys) > 1 && !onlyAnnotations(s, "$ref", "$defs", "definitions") {
			return "", &UnsupportedError{What: "$ref", Msg: "schema keyword \"$ref\" is supported only alone (with annotations)"}
		}
		return g.genRef(ref, depth)
	}
	if anyOf, ok := s.vals["anyOf"]; ok {
		if !onlyAnnotations(s, "anyOf", "$defs", "definitions") {
			return "", &UnsupportedError{What: "anyOf", Msg: "schema keyword \"anyOf\" is supported only alone (with annotations)"}
		}
		list, ok := anyOf.([]any)
		if !ok || len(list) == 0 {
			return "", fmt.Errorf("invalid JSON schema: anyOf must be a non-empty array")
		}
		var alts []string
		for _, sub := range list {
			r, err := g.gen(sub, depth+1)
			if err != nil {
				return "", err
			}
			alts = append(alts, r)
		}
		return g.grow(`(?:` + strings.Join(alts, `|`) + `)`)
	}
	_, hasEnum := s.vals["enum"]
	_, hasConst := s.vals["const"]
	if hasEnum || hasConst {
		return g.genEnum(s)
	}
	var types []string
	switch t := s.vals["type"].(type) {
	case nil:
		if len(s.keys) > 0 && !onlyAnnotations(s, "$defs", "definitions") {
			// Keywords without a type: infer the type they belong to.
			switch {
			case has(s, "properties", "required", "additionalProperties"):
				types = []string{"object"}
			case has(s, "items", "minItems", "maxItems"):
				types = []string{"array"}
			case has(s, "minLength", "maxLength"):
				types = []string{"string"}
			}
		}
		if types == nil {
			return g.grow(anyValue(AnyJSONDepth))
		}
	case string:
		types = []string{t}
	case []any:
		for _, x := range t {
			ts, ok := x.(string)
			if !ok {
				return "", fmt.Errorf("invalid JSON schema: type must be a string or an array of strings")
			}
			types = append(types, ts)
		}
	default:
		return "", fmt.Errorf("invalid JSON schema: type must be a string or an array of strings")
	}
	if len(types) == 0 {
		return "", fmt.Errorf("invalid JSON schema: type must not be an empty array")
	}
	var alts []string
	for _, t := range types {
		var r string
		var err error
		switch t {
		case "object":
			r, err = g.genProperties(s, depth)
		case "array":
			r, err = g.genArray(s, depth)
		case "string":
			r, err = genString(s)
		case "integer":
			r = reInteger
		case "number":
			r = reNumber
		case "boolean":
			r = `(?:true|false)`
		case "null":
			r = `null`
		default:
			return "", fmt.Errorf("invalid JSON schema: unknown type %q", t)
		}
		if err != nil {
			return "", err
		}
		alts = append(alts, r)
	}
	if len(alts) == 1 {
		return g.grow(alts[0])
	}
	return g.grow(`(?:` + strings.Join(alts, `|`) + `)`)
}

func has(s *object, keys ...string) bool {
	for _, k := range keys {
		if _, ok := s.vals[k]; ok {
			return true
		}
	}
	return false
}

func onlyAnnotations(s *object, allowed ...string) bool {
	for _, k := range s.keys {
		if !annotations[k] && !slices.Contains(allowed, k) {
			return false
		}
	}
	return true
}

func (g *schemaGen) genRef(ref any, depth int) (string, error) {
	r, ok := ref.(string)
	var name, section string
	if ok {
		for _, sec := range []string{"#/$defs/", "#/definitions/"} {
			if strings.HasPrefix(r, sec) {
				section, name = sec[2:len(sec)-1], r[len(sec):]
			}
		}
	}
	if name == "" && r != "#" {
		return "", &UnsupportedError{What: "$ref", Msg: fmt.Sprintf("schema $ref %q is not supported (only #/$defs/NAME and #/definitions/NAME)", r)}
	}
	if g.rules == nil && slices.Contains(g.refs, r) {
		return "", &recursiveRefError{ref: r}
	}
	target := g.root
	if name != "" {
		root, _ := g.root.(*object)
		var defs *object
		if root != nil {
			defs, _ = root.vals[section].(*object)
		}
		if defs == nil || defs.vals[name] == nil {
			return "", fmt.Errorf("invalid JSON schema: $ref %q names no definition", r)
		}
		target = defs.vals[name]
	}
	if g.rules != nil {
		// Each target is walked once, into its rule; a ref to it (from inside it too) is a
		// placeholder. Its depth counts from the ref: rules do not expand into each other,
		// so a chain of them (an AST's node types) costs their sum, not their product.
		n, walked := g.rules.rule(g.key+"\x00"+r, g.label+r)
		if !walked {
			body, err := g.gen(target, 1)
			if err != nil {
				return "", err
			}
			if err := g.rules.define(n, body); err != nil {
				return "", err
			}
		}
		return g.grow(placeholder(n))
	}
	g.refs = append(g.refs, r)
	defer func() { g.refs = g.refs[:len(g.refs)-1] }()
	return g.gen(target, depth+1)
}

// genEnum is the alternation of the enum's (and const's) values, as compact JSON, that also
// have the schema's type.
func (g *schemaGen) genEnum(s *object) (string, error) {
	if !onlyAnnotations(s, "enum", "const", "type", "$defs", "definitions") {
		for _, k := range s.keys {
			if !annotations[k] && !slices.Contains([]string{"enum", "const", "type", "$defs", "definitions"}, k) {
				return "", &UnsupportedError{What: k, Msg: fmt.Sprintf("schema keyword %q is not supported beside enum or const", k)}
			}
		}
	}
	var values []any
	if e, ok := s.vals["enum"]; ok {
		list, ok := e.([]any)
		if !ok {
			return "", fmt.Errorf("invalid JSON schema: enum must be an array")
		}
		if len(list) > MaxChoices {
			return "", &LimitError{Limit: "MaxChoices", Msg: fmt.Sprintf("the enum has %d values, more than %d", len(list), MaxChoices)}
		}
		values = list
	}
	if c, ok := s.vals["const"]; ok {
		if values == nil {
			values = []any{c}
		} else {
			values = slices.DeleteFunc(values, func(v any) bool { return canonical(v) != canonical(c) })
		}
	}
	var alts []string
	for _, v := range values {
		if t, ok := s.vals["type"]; ok && !hasType(v, t) {
			continue
		}
		alts = append(alts, regexp.QuoteMeta(canonical(v)))
	}
	if len(alts) == 0 {
		return "", fmt.Errorf("conflicting schema: no value of enum/const satisfies the schema")
	}
	return g.grow(`(?:` + strings.Join(alts, `|`) + `)`)
}

// hasType reports whether v (from parseOrdered) has the JSON type (or one of the types) t.
func hasType(v any, t any) bool {
	var types []string
	switch x := t.(type) {
	case string:
		types = []string{x}
	case []any:
		for _, y := range x {
			if s, ok := y.(string); ok {
				types = append(types, s)
			}
		}
	}
	for _, ty := range types {
		switch x := v.(type) {
		case nil:
			if ty == "null" {
				return true
			}
		case bool:
			if ty == "boolean" {
				return true
			}
		case string:
			if ty == "string" {
				return true
			}
		case json.Number:
			f, err := x.Float64()
			if ty == "number" || ty == "integer" && err == nil && f == math.Trunc(f) {
				return true
			}
		case []any:
			if ty == "array" {
				return true
			}
		case *object:
			if ty == "object" {
				return true
			}
		}
	}
	return false
}

func (g *schemaGen) genProperties(s *object, depth int) (string, error) {
	props, _ := s.vals["properties"].(*object)
	if _, ok := s.vals["properties"]; ok && props == nil {
		return "", fmt.Errorf("invalid JSON schema: properties must be an object")
	}
	switch s.vals["additionalProperties"].(type) {
	case nil, bool:
	default:
		return "", &UnsupportedError{What: "additionalProperties", Msg: "schema keyword \"additionalProperties\" is supported as a boolean only"}
	}
	required := map[string]bool{}
	if r, ok := s.vals["required"]; ok {
		list, ok := r.([]any)
		if !ok {
			return "", fmt.Errorf("invalid JSON schema: required must be an array of strings")
		}
		for _, x := range list {
			name, ok := x.(string)
			if !ok {
				return "", fmt.Errorf("invalid JSON schema: required must be an array of strings")
			}
			if props == nil || props.vals[name] == nil {
				return "", fmt.Errorf("conflicting schema: required property %q is not in properties", name)
			}
			required[name] = true
		}
	}
	if props == nil || len(props.keys) == 0 {
		if s.vals["additionalProperties"] == false {
			return `\{\}`, nil
		}
		return g.grow(anyObject(AnyJSONDepth))
	}
	members := make([]string, len(props.keys))
	for i, k := range props.keys {
		v, err := g.gen(props.vals[k], depth+1)
		if err != nil {
			return "", err
		}
		name, _ := json.Marshal(k)
		members[i] = regexp.QuoteMeta(string(name)) + `:` + v
	}
	// Properties come in the schema's order. An optional one may be left out; the first one
	// written has no comma before it, so the regex chooses which property comes first (no
	// required property may precede it) and writes the later ones with commas.
	firstRequired := len(props.keys)
	for i, k := range props.keys {
		if required[k] {
			firstRequired = i
			break
		}
	}
	var alts []string
	if firstRequired == len(props.keys) {
		alts = append(alts, ``)
	}
	for first := 0; first <= min(firstRequired, len(props.keys)-1); first++ {
		var b strings.Builder
		b.WriteString(members[first])
		for j := first + 1; j < len(props.keys); j++ {
			if required[props.keys[j]] {
				b.WriteString(`,` + members[j])
			} else {
				b.WriteString(`(?:,` + members[j] + `)?`)
			}
		}
		if _, err := g.grow(b.String()); err != nil {
			return "", err
		}
		alts = append(alts, b.String())
	}
	return `\{(?:` + strings.Join(alts, `|`) + `)\}`, nil
}

// bounds reads a pair of non-negative integer keywords (minItems/maxItems,
// minLength/maxLength): max is -1 when absent.
func bounds(s *object, minKey, maxKey string) (lo, hi int, err error) {
	lo, hi = 0, -1
	for _, k := range []string{minKey, maxKey} {
		v, ok := s.vals[k]
		if !ok {
			continue
		}
		num, _ := v.(json.Number)
		n, err := strconv.Atoi(string(num))
		if err != nil || n < 0 {
			return 0, 0, fmt.Errorf("invalid JSON schema: %s must be a non-negative integer", k)
		}
		if n > MaxRepeat {
			return 0, 0, &LimitError{Limit: "MaxRepeat", Msg: fmt.Sprintf("%s %d is more than %d", k, n, MaxRepeat)}
		}
		if k == minKey {
			lo = n
		} else {
			hi = n
		}
	}
	if hi >= 0 && lo > hi {
		return 0, 0, fmt.Errorf("conflicting schema: %s %d is more than %s %d", minKey, lo, maxKey, hi)
	}
	return lo, hi, nil
}

func repeat(lo, hi int) string {
	if hi < 0 {
		return fmt.Sprintf(`{%d,}`, lo)
	}
	return fmt.Sprintf(`{%d,%d}`, lo, hi)
}

func genString(s *object) (string, error) {
	lo, hi, err := bounds(s, "minLength", "maxLength")
	if err != nil {
		return "", err
	}
	if lo == 0 && hi < 0 {
		return reString, nil
	}
	return `"` + reChar + repeat(lo, hi) + `"`, nil
}

func (g *schemaGen) genArray(s *object, depth int) (string, error) {
	lo, hi, err := bounds(s, "minItems", "maxItems")
	if err != nil {
		return "", err
	}
	item := anyValue(AnyJSONDepth - 1)
	if it, ok := s.vals["items"]; ok {
		if item, err = g.gen(it, depth+1); err != nil {
			return "", err
		}
	}
	if hi == 0 {
		return `\[\]`, nil
	}
	var r string
	if lo == 0 {
		r = `\[(?:` + item + `(?:,` + item + `)` + repeat(0, max(hi-1, -1)) + `)?\]`
		if hi < 0 {
			r = `\[(?:` + item + `(?:,` + item + `)*)?\]`
		}
	} else {
		r = `\[` + item + `(?:,` + item + `)` + repeat(lo-1, max(hi-1, -1)) + `\]`
	}
	return g.grow(r)
}

// object is a JSON object that keeps its keys' order (properties are written in it).
type object struct {
	keys []string
	vals map[string]any
}

// parseOrdered decodes JSON like encoding/json into any, but objects become *object and numbers
// json.Number.
func parseOrdered(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := parseValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err == nil {
		return nil, fmt.Errorf("trailing data after the schema")
	}
	return v, nil
}

func parseValue(dec *json.Decoder, depth int) (any, error) {
	if depth > 64 {
		return nil, &LimitError{Limit: "MaxSchemaDepth", Msg: "the schema's JSON nests deeper than 64 levels"}
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			o := &object{vals: map[string]any{}}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k := kt.(string)
				v, err := parseValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				if _, dup := o.vals[k]; dup {
					return nil, fmt.Errorf("duplicate key %q", k)
				}
				o.keys = append(o.keys, k)
				o.vals[k] = v
			}
			_, err := dec.Token()
			return o, err
		case '[':
			list := []any{}
			for dec.More() {
				v, err := parseValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				list = append(list, v)
			}
			_, err := dec.Token()
			return list, err
		}
	}
	return tok, nil
}

// canonical is v as compact JSON with object keys in their original order.
func canonical(v any) string {
	switch x := v.(type) {
	case *object:
		var b strings.Builder
		b.WriteByte('{')
		for i, k := range x.keys {
			if i > 0 {
				b.WriteByte(',')
			}
			kb, _ := json.Marshal(k)
			b.Write(kb)
			b.WriteByte(':')
			b.WriteString(canonical(x.vals[k]))
		}
		b.WriteByte('}')
		return b.String()
	case []any:
		parts := make([]string, len(x))
		for i, y := range x {
			parts[i] = canonical(y)
		}
		return "[" + strings.Join(parts, ",") + "]"
	default:
		b, _ := json.Marshal(x)
		return string(b)
	}
}
