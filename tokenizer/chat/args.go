package chat

import "fmt"

// missing marks a parameter the caller did not pass.
type missingT struct{}

var missing = missingT{}

// bindArgs maps positional and keyword arguments onto named parameters the
// way Python does, leaving unpassed ones as missing.
func bindArgs(fname string, args []value, kw *dictVal, params ...string) ([]value, error) {
	if len(args) > len(params) {
		return nil, fmt.Errorf("%s() takes at most %d arguments (%d given)", fname, len(params), len(args))
	}
	out := make([]value, len(params))
	for i := range out {
		out[i] = missing
	}
	copy(out, args)
	if kw != nil {
		for i, k := range kw.keys {
			name, _ := k.(string)
			found := false
			for j, p := range params {
				if p == name {
					if j < len(args) {
						return nil, fmt.Errorf("%s() got multiple values for argument '%s'", fname, name)
					}
					out[j] = kw.vals[i]
					found = true
				}
			}
			if !found {
				return nil, fmt.Errorf("%s() got an unexpected keyword argument '%s'", fname, name)
			}
		}
	}
	return out, nil
}

func isMissing(v value) bool { _, ok := v.(missingT); return ok }

// orDefault returns v unless it is missing.
func orDefault(v, def value) value {
	if isMissing(v) {
		return def
	}
	return v
}

func argStr(fname string, v value) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s() argument must be str, not %s", fname, typeName(v))
	}
	return s, nil
}

func argInt(fname string, v value) (int64, error) {
	n, ok := toNumber(v)
	if !ok || !n.isInt {
		return 0, fmt.Errorf("%s() argument must be int, not %s", fname, typeName(v))
	}
	return n.i, nil
}
