package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/resource"
)

// A pause that holds while no resync runs shows in the text form: it is
// why a connected pair with out-of-sync blocks does not resync.
func TestStatusTextShowsResyncPaused(t *testing.T) {
	st := resource.Status{Name: "r0", Conn: resource.ConnConnected, SyncPaused: true}
	var b bytes.Buffer
	writeStatusText(&b, st)
	if !strings.Contains(b.String(), " resync-paused:true") {
		t.Fatalf("no resync-paused in:\n%s", b.String())
	}
	st.SyncPaused = false
	b.Reset()
	writeStatusText(&b, st)
	if strings.Contains(b.String(), "resync-paused") {
		t.Fatalf("resync-paused shown without a pause:\n%s", b.String())
	}
}
