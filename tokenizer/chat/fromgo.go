// Conversion of caller data (messages, tools, kwargs) into template values.

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
