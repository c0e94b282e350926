package openai

import (
	"net"
	"net/url"
	"strings"
	"testing"
)

// The Host and Origin parsers never panic and keep their two promises on any input: an IP
// literal Host is always answered (probes and scrapes send one; a rebinding page cannot), a
// DNS name only when it is localhost, *.localhost or allowed; and an Origin is accepted only
// when allowed or when it names the request's own host.
func FuzzBrowserGuard(f *testing.F) {
	for _, s := range []struct{ host, origin string }{
		{"127.0.0.1:8000", ""}, {"[::1]:8000", "http://[::1]:8000"}, {"localhost", "null"},
		{"evil.example:8000", "http://evil.example:8000"}, {"EVIL.example.", "https://app.example"},
		{"api.internal:443", "https://app.example/"}, {"10.0.0.7:8000", "http://10.0.0.7:8000"},
		{"[fe80::1%25eth0]:80", "http://user@10.0.0.7:8000"}, {"a.localhost", "http://a.localhost:1/x"},
		{"", ""}, {":80", "://"}, {"[", "http://["}, {"1.2.3.4.nip.io", "http://1.2.3.4.nip.io"},
		{"127.0.0.1.evil.example", "ftp://127.0.0.1"}, {"localhost.evil.example:80", "http://localhost"},
	} {
		f.Add(s.host, s.origin)
	}
	g := newBrowserGuard([]string{"https://app.example"}, []string{"api.internal"})
	f.Fuzz(func(t *testing.T, host, origin string) {
		name := hostName(host)
		if i := strings.IndexByte(name, '%'); i >= 0 {
			name = name[:i]
		}
		allowedName := name == "localhost" || strings.HasSuffix(name, ".localhost") || name == "api.internal"
		isIP := name != "" && net.ParseIP(name) != nil
		if got := g.hostAllowed(host); got != (isIP || allowedName) {
			t.Fatalf("hostAllowed(%q) = %v; name %q, IP %v, allowed name %v", host, got, name, isIP, allowedName)
		}
		if g.originAllowed(origin, host) {
			o := strings.ToLower(strings.TrimSpace(origin))
			u, err := url.Parse(o)
			own := err == nil && strings.EqualFold(u.Host, host) && u.Host != ""
			if o != "https://app.example" && !own {
				t.Fatalf("originAllowed(%q, %q): neither allowed nor the request's own host", origin, host)
			}
		}
	})
}
