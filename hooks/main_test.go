package hooks

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: a
// Runner must not leak the goroutines that wait for its handlers.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
