package chat

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
