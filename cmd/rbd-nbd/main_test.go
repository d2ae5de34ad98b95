package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when they leave goroutines running:
// the commands start servers, clients and daemons whose goroutines must
// end with them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
