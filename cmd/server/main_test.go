package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that run leaves no goroutine behind once it has returned, but one: the
// go-zeromq PUB socket's writer (pubMWriter.run, zmq4 v0.17.0), which the socket's Close never
// stops, one per --kv-events-config server and only at its exit.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*pubMWriter).run"))
}
