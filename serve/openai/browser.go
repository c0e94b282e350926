package openai

import (
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/loraplex/loraplex/serve"
)

// Browsers cannot drive the API. A web page can make a visitor's browser send requests to any
// address, loopback included, and a DNS-rebinding page (its own name re-pointed at 127.0.0.1)
// can even read the answers. Without an API key nothing else stands in its way, so then:
//
//   - a request that carries an Origin header (every cross-origin POST from a browser does) is
//     refused unless the origin is allowed (--allowed-origins) or is this server itself;
//   - a request whose Host is a DNS name the server does not answer to is refused: that name is
//     the rebinding page's own. IP literals are always accepted (a rebinding page cannot send
//     one: its Host is its own name), so Kubernetes probes and Prometheus scrapes, which send
//     Host: <pod IP>:<port>, keep working; so do localhost and *.localhost, and the names in
//     --allowed-hosts;
//
// and, with or without a key, POST bodies must be application/json: a browser may send a
// cross-origin form or text/plain POST without asking first, never an application/json one.

// browserGuard holds the allowed origins and host names, normalised.
type browserGuard struct {
	anyOrigin bool
	origins   map[string]bool // "scheme://host[:port]", lower case
	anyHost   bool
	hosts     map[string]bool // host names, lower case, without port or trailing dot
}

func newBrowserGuard(origins, hosts []string) *browserGuard {
	g := &browserGuard{origins: map[string]bool{}, hosts: map[string]bool{}}
	for _, o := range origins {
		o = strings.TrimSpace(o)
		if o == "*" {
			g.anyOrigin = true
		} else if o != "" {
			g.origins[strings.ToLower(strings.TrimSuffix(o, "/"))] = true
		}
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if h == "*" {
			g.anyHost = true
		} else if name := hostName(h); name != "" {
			g.hosts[name] = true
		}
	}
	return g
}

// hostName is the lower-case name or address of a Host header value or "host:port", without
// port, brackets or trailing dot; "" when it has none.
func hostName(hostport string) string {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	} else if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// hostAllowed reports whether the server answers to a request with this Host header.
func (g *browserGuard) hostAllowed(hostport string) bool {
	if g.anyHost {
		return true
	}
	h := hostName(hostport)
	if h == "" {
		return false
	}
	if i := strings.IndexByte(h, '%'); i >= 0 { // an IPv6 zone
		h = h[:i]
	}
	if net.ParseIP(h) != nil {
		return true
	}
	return h == "localhost" || strings.HasSuffix(h, ".localhost") || g.hosts[h]
}

// originAllowed reports whether a request with this Origin header (present) may be answered,
// given its Host.
func (g *browserGuard) originAllowed(origin, host string) bool {
	if g.anyOrigin {
		return true
	}
	o := strings.ToLower(strings.TrimSpace(origin))
	if g.origins[o] {
		return true
	}
	// The server's own origin: a page it served itself (it serves none today, but a proxy in
	// front may). "null" (sandboxed frames, file: pages) never matches.
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.User != nil {
		return false
	}
	return strings.EqualFold(u.Host, host)
}

// check returns the error for a request a browser must not be able to make, or nil.
func (g *browserGuard) check(r *http.Request) *apiError {
	if !g.hostAllowed(r.Host) {
		return codedError(serve.KindForbidden, "host_not_allowed",
			"this server does not answer to host "+quoteHeader(r.Host)+" (see --allowed-hosts)")
	}
	if origins := r.Header.Values("Origin"); len(origins) > 0 {
		if len(origins) > 1 || !g.originAllowed(origins[0], r.Host) {
			return codedError(serve.KindForbidden, "origin_not_allowed",
				"requests from origin "+quoteHeader(origins[0])+" are not allowed (see --allowed-origins)")
		}
	}
	return nil
}

// quoteHeader quotes a client-sent value for an error message, bounded.
func quoteHeader(s string) string {
	if len(s) > 100 {
		s = s[:100] + "..."
	}
	return `"` + strings.ToValidUTF8(strings.Map(func(r rune) rune {
		if r < ' ' || r == '"' || r == 0x7f {
			return '?'
		}
		return r
	}, s), "?") + `"`
}

// jsonBody refuses a POST whose body is not declared application/json (parameters such as
// charset=utf-8 are fine).
func jsonBody(r *http.Request) *apiError {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err == nil && mt == "application/json" {
		return nil
	}
	return codedError(serve.KindBadMediaType, "unsupported_media_type",
		"the request body must be JSON sent with Content-Type: application/json")
}
