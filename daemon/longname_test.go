package daemon

import (
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
)

// A request naming a resource with a name at the request limit (64 KiB)
// gets an error the client can read: the reply's message quotes the name,
// cut to 4 KiB. Quoted whole it exceeded the value limit the client reads
// replies with, and the client reported a malformed reply instead of
// UNKNOWN_RESOURCE.
func TestLongNameErrorReadable(t *testing.T) {
	e := start(t, Config{}, nil)
	c := e.dial(t)
	name := strings.Repeat("x", 64<<10)
	_, err := c.Status(ctxT(t), name)
	wantCode(t, err, ctlproto.CodeUnknownResource)
}
