package openai_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives the tests: stream fan-in goroutines,
// engine loops and server connections must all end when requests, engines and servers do.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
