package ctlproto

import (
	"testing"

	"github.com/rbd-nbd/rbd-nbd/resource"
)

// A Status.LinkError that is not valid UTF-8 (a peer's text) is encoded
// valid, so that the client still decodes the reply.
func TestStatusWithBadLinkErrorDecodes(t *testing.T) {
	st := resource.Status{Name: "r0", LinkError: "replicate: peer disconnected: bad \xff reason"}
	body := List{EncodeStatus(st, StatusFieldsFor(ProtoMinor))}
	if _, err := DecodeList(body.Append(nil), ReplyLimits()); err != nil {
		t.Fatalf("a status reply whose link-error holds a peer's non-UTF-8 text does not decode: %v", err)
	}
}
