package serve

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/loraplex/loraplex/adaptercache"
)

// Served names. A request's model, an adapter's and a router's name share one namespace: the
// base model's name, the adapters (loaded by LoadAdapter or found in an adapter directory on
// first use) and the routers. nameRegistry is its one owner: every load reserves its name under
// the registry's lock before any work and commits or gives it back after, every request
// resolves its model through it, and every unload checks it, so no two loads can take one name
// (which a check in one lock followed by an insert under another allowed) and no unload breaks
// a router that still uses an adapter.

// MaxNameBytes bounds a served name: an adapter directory's entry is DIR/NAME, and no file
// system takes a longer name (NAME_MAX).
const MaxNameBytes = 255

// CheckName is the one rule for names that can be served (adapters, routers, and names looked
// up in adapter directories): at most MaxNameBytes bytes of UTF-8, every character printable
// (letters, marks, digits, punctuation, symbols, and the ASCII space, so no control, format,
// bidi or other space characters), no space at either end, and a single path element that is
// not hidden (no '/' or '\', no leading '.'), since the name is looked up as DIR/NAME. It
// returns a message saying what is wrong, or "" for a good name.
func CheckName(name string) string {
	switch {
	case name == "":
		return "is empty"
	case len(name) > MaxNameBytes:
		return fmt.Sprintf("is %d bytes long; the limit is %d", len(name), MaxNameBytes)
	case !utf8.ValidString(name):
		return "is not valid UTF-8"
	case strings.TrimSpace(name) != name:
		return "starts or ends with white space"
	case strings.HasPrefix(name, "."):
		return "starts with '.'"
	}
	for i, r := range name {
		switch {
		case r == '/' || r == '\\':
			return fmt.Sprintf("contains %q at byte %d; a name is a single path element", r, i)
		case !unicode.IsPrint(r):
			return fmt.Sprintf("contains the non-printable character %U at byte %d (control, format, bidi and non-ASCII space characters are refused)", r, i)
		}
	}
	return ""
}

// shown is name as messages quote it: as given when it follows the rule, else Go-quoted, so
// that a refused name cannot carry control or bidi characters into a response or a log.
func shown(name string) string {
	if CheckName(name) == "" {
		return "'" + name + "'"
	}
	return strconv.Quote(name)
}

// nameKind is what a served name stands for.
type nameKind uint8

const (
	nameNone nameKind = iota
	nameAdapter
	nameRouter
)

func (k nameKind) String() string {
	switch k {
	case nameAdapter:
		return "adapter"
	case nameRouter:
		return "router"
	}
	return "nothing"
}

// servedName is one name's entry. A load in progress holds it with pending set; kind is what
// the name serves now (nameNone while a first load is in progress, the old kind while a
// replacement loads).
type servedName struct {
	kind    nameKind
	pending nameKind
	router  *routerEntry // kind == nameRouter
}

type nameRegistry struct {
	mu    sync.Mutex
	base  string
	dirs  []string
	names map[string]*servedName
}

func newNameRegistry(base string, dirs []string) *nameRegistry {
	return &nameRegistry{base: base, dirs: dirs, names: map[string]*servedName{}}
}

// inDirs returns where the first adapter directory that has name keeps it
// (adaptercache.DirPaths), or "". Called with
// mu held, for names not in the registry.
func (r *nameRegistry) inDirs(name string) string {
	for _, dir := range r.dirs {
		for _, p := range adaptercache.DirPaths(dir, name) {
			if _, err := os.Stat(p); err == nil { // as the adapter cache looks it up
				return p
			}
		}
	}
	return ""
}

// alreadyServed is vLLM's answer to a load under a name that is served.
func alreadyServed(kind nameKind, name string) *Error {
	if kind == nameRouter {
		return errorf(KindInvalid, "", "The router '%s' has already been loaded; set load_inplace to replace it.", name)
	}
	return errorf(KindInvalid, "", "The lora adapter '%s' has already been loaded; set load_inplace to replace it.", name)
}

// reservation is a load's hold on a name, from reserve to commit or abort.
type reservation struct {
	name  string
	kind  nameKind
	fresh bool // the name served nothing before: abort removes it
}

// reserve holds name for a load of kind. A load under a name that serves something is refused
// unless replace is set and it serves the same kind; a name whose load is in progress is a
// conflict. An adapter load whose path is the adapter directory's own entry for name is not a
// replacement (it only loads now what the first request would have loaded).
func (r *nameRegistry) reserve(name string, kind nameKind, path string, replace bool) (*reservation, error) {
	if msg := CheckName(name); msg != "" {
		return nil, errorf(KindInvalid, "", "the name %q %s", name, msg)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if name == r.base {
		return nil, errorf(KindInvalid, "", "the name '%s' is the base model's", name)
	}
	s := r.names[name]
	if s == nil {
		if p := r.inDirs(name); p != "" {
			switch {
			case kind == nameRouter:
				return nil, errorf(KindInvalid, "", "the name '%s' is an adapter's in an adapter directory (%s)", name, filepath.Dir(p))
			case !replace && !samePath(p, path):
				return nil, errorf(KindInvalid, "", "The lora adapter '%s' is already served from an adapter directory (%s); set load_inplace to replace it.", name, filepath.Dir(p))
			}
		}
		r.names[name] = &servedName{pending: kind}
		return &reservation{name: name, kind: kind, fresh: true}, nil
	}
	switch {
	case s.pending != nameNone:
		return nil, errorf(KindConflict, "", "a load of '%s' is in progress; try again when it has finished", name)
	case s.kind != kind:
		return nil, errorf(KindInvalid, "", "the name '%s' is already a loaded %s's; unload it first", name, s.kind)
	case !replace:
		return nil, alreadyServed(kind, name)
	}
	s.pending = kind
	return &reservation{name: name, kind: kind}, nil
}

// samePath reports whether two paths name the same file after resolving links.
func samePath(a, b string) bool {
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	return err1 == nil && err2 == nil && ra == rb
}

// abort gives a reservation back: the name serves what it served before.
func (r *nameRegistry) abort(res *reservation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if res.fresh {
		delete(r.names, res.name)
		return
	}
	r.names[res.name].pending = nameNone
}

// commitAdapter publishes a reserved adapter name.
func (r *nameRegistry) commitAdapter(res *reservation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.names[res.name]
	s.kind, s.pending = nameAdapter, nameNone
}

// commitRouter publishes a reserved router name with its entry, provided every expert is still
// an adapter's name (an expert unloaded during the load is a conflict; the reservation is
// then given back). It returns the entry it replaces, if any, for the caller to retire.
func (r *nameRegistry) commitRouter(res *reservation, ent *routerEntry) (*routerEntry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.names[res.name]
	for _, x := range ent.bundle.Experts() {
		if err := r.expertLocked(x); err != nil {
			if res.fresh {
				delete(r.names, res.name)
			} else {
				s.pending = nameNone
			}
			return nil, &Error{Kind: KindConflict, Msg: fmt.Sprintf("router %q", res.name), Err: err}
		}
	}
	old := s.router
	s.kind, s.pending, s.router = nameRouter, nameNone, ent
	return old, nil
}

// expert checks that a router's expert x names an adapter (loaded, being loaded, or in an
// adapter directory) and records a directory's adapter as served. Errors are KindNotFound for
// a name that serves nothing and KindUnprocessable for one that is not an adapter's.
func (r *nameRegistry) expert(x string) *Error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.expertLocked(x)
}

func (r *nameRegistry) expertLocked(x string) *Error {
	if msg := CheckName(x); msg != "" {
		return errorf(KindUnprocessable, "", "expert name %q %s", x, msg)
	}
	if x == r.base {
		return errorf(KindUnprocessable, "", "expert %q is the base model, not an adapter", x)
	}
	if s := r.names[x]; s != nil {
		if s.kind == nameAdapter || s.pending == nameAdapter {
			return nil
		}
		if s.kind == nameRouter || s.pending == nameRouter {
			return errorf(KindUnprocessable, "", "expert %q is a router, not an adapter", x)
		}
	}
	if r.inDirs(x) != "" {
		r.names[x] = &servedName{kind: nameAdapter}
		return nil
	}
	return errorf(KindNotFound, "", "expert adapter %q is not loaded and in no adapter directory", x)
}

// resolve says what a request's model name serves: nameNone for the base model, a router
// (with a reference taken when hold is set: give it back with dropRouter), or an adapter, which
// the adapter cache then finds (an adapter directory's name is recorded as an adapter's on
// first use). A name that serves nothing, or whose first load as a router is in progress, is
// not found.
func (r *nameRegistry) resolve(name string, hold bool) (nameKind, *routerEntry, error) {
	if name == "" || name == r.base {
		return nameNone, nil, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.names[name]; s != nil {
		switch {
		case s.kind == nameRouter:
			if hold {
				s.router.refs++
			}
			return nameRouter, s.router, nil
		case s.kind == nameAdapter, s.pending == nameAdapter:
			return nameAdapter, nil, nil
		}
	} else if CheckName(name) == "" && r.inDirs(name) != "" {
		r.names[name] = &servedName{kind: nameAdapter}
		return nameAdapter, nil, nil
	}
	if CheckName(name) != "" {
		return nameNone, nil, errorf(KindNotFound, "model", "the model %s does not exist", strconv.Quote(name))
	}
	return nameNone, nil, errorf(KindNotFound, "model", "the model `%s` does not exist", name)
}

// unlistAdapter removes an adapter's name, refusing while a loaded router uses it as an
// expert (the router would fail every request) or while a load of the name is in progress.
// unregister runs under the lock, so no router load can commit on the adapter in between.
func (r *nameRegistry) unlistAdapter(name string, unregister func() bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.names[name]
	if s == nil || s.kind != nameAdapter {
		if s != nil && s.pending == nameAdapter {
			return errorf(KindConflict, "lora_name", "a load of '%s' is in progress; try again when it has finished", name)
		}
		return errorf(KindNotFound, "lora_name", "The lora adapter %s cannot be found.", shown(name))
	}
	if s.pending != nameNone {
		return errorf(KindConflict, "lora_name", "a load of '%s' is in progress; try again when it has finished", name)
	}
	var users []string
	for rn, rs := range r.names {
		if rs.kind == nameRouter && slices.Contains(rs.router.bundle.Experts(), name) {
			users = append(users, rn)
		}
	}
	if len(users) > 0 {
		sort.Strings(users)
		return errorf(KindConflict, "lora_name", "the lora adapter '%s' is an expert of the loaded router '%s'; unload the router first", name, strings.Join(users, "', '"))
	}
	delete(r.names, name)
	unregister()
	return nil
}

// unlistRouter removes a router's name and returns its entry for the caller to retire.
func (r *nameRegistry) unlistRouter(name string) (*routerEntry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.names[name]
	if s == nil || s.kind != nameRouter {
		if s != nil && s.pending == nameRouter {
			return nil, errorf(KindConflict, "router", "a load of '%s' is in progress; try again when it has finished", name)
		}
		return nil, errorf(KindNotFound, "router", "the router %s is not loaded", shown(name))
	}
	if s.pending != nameNone {
		return nil, errorf(KindConflict, "router", "a load of '%s' is in progress; try again when it has finished", name)
	}
	delete(r.names, name)
	return s.router, nil
}

// routers returns the loaded routers' entries, sorted by name.
func (r *nameRegistry) routers() []*routerEntry {
	r.mu.Lock()
	var out []*routerEntry
	for _, s := range r.names {
		if s.kind == nameRouter {
			out = append(out, s.router)
		}
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}
