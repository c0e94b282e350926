package main

import (
	"io"
	"testing"
)

// Prefix caching is on by default and follows vLLM's flags: --no-enable-prefix-caching turns it
// off, --enable-prefix-caching on, and the last one given wins.
func TestPrefixCachingFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"--no-enable-prefix-caching"}, false},
		{[]string{"--enable-prefix-caching"}, true},
		{[]string{"--enable-prefix-caching=false"}, false},
		{[]string{"--enable-prefix-caching", "--no-enable-prefix-caching"}, false},
		{[]string{"--no-enable-prefix-caching", "--enable-prefix-caching"}, true},
	} {
		cfg, err := parseFlags(c.args, io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if cfg.prefixCaching != c.want {
			t.Errorf("%v: prefix caching %v, want %v", c.args, cfg.prefixCaching, c.want)
		}
	}
}

// --deterministic is off by default and turns the engine's batch-invariant mode on.
func TestDeterministicFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"--deterministic"}, true},
		{[]string{"--deterministic=false"}, false},
	} {
		cfg, err := parseFlags(c.args, io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if cfg.deterministic != c.want {
			t.Errorf("%v: deterministic %v, want %v", c.args, cfg.deterministic, c.want)
		}
	}
}
