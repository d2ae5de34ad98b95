package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
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

// A disk grown beyond the resource (resize-md, the peer not grown yet)
// shows its capacity in the text form; a capacity equal to the size does
// not show.
func TestStatusTextShowsCapacity(t *testing.T) {
	st := resource.Status{Name: "r0", Conn: resource.ConnConnected, Size: 1 << 20, Capacity: 2 << 20}
	var b bytes.Buffer
	writeStatusText(&b, st)
	if !strings.Contains(b.String(), " capacity:2097152") {
		t.Fatalf("no capacity in:\n%s", b.String())
	}
	st.Capacity = st.Size
	b.Reset()
	writeStatusText(&b, st)
	if strings.Contains(b.String(), "capacity") {
		t.Fatalf("capacity shown equal to the size:\n%s", b.String())
	}
}

// adjust brings the running resource to what the file describes, as
// drbdadm adjust does: a Diskless node attaches its disk, then a
// StandAlone one connects; the --skip flags leave each out, and a
// resource that is down is the adjust's own to bring up.
func TestAdjustActions(t *testing.T) {
	d, a := ctlproto.MsgAttachDisk, ctlproto.MsgConnect
	for _, c := range []struct {
		st   resource.Status
		skip adjustSkip
		want []ctlproto.MsgType
	}{
		{resource.Status{Disk: resource.DiskUpToDate, Conn: resource.ConnConnected}, adjustSkip{}, nil},
		{resource.Status{Disk: resource.DiskUpToDate, Conn: resource.ConnConnecting}, adjustSkip{}, nil},
		{resource.Status{Disk: resource.DiskOutdated, Conn: resource.ConnStandAlone}, adjustSkip{}, []ctlproto.MsgType{a}},
		{resource.Status{Disk: resource.DiskDiskless, Conn: resource.ConnConnected}, adjustSkip{}, []ctlproto.MsgType{d}},
		{resource.Status{Disk: resource.DiskDiskless, Conn: resource.ConnStandAlone}, adjustSkip{}, []ctlproto.MsgType{d, a}},
		{resource.Status{Disk: resource.DiskDiskless, Conn: resource.ConnStandAlone}, adjustSkip{disk: true}, []ctlproto.MsgType{a}},
		{resource.Status{Disk: resource.DiskDiskless, Conn: resource.ConnStandAlone}, adjustSkip{net: true}, []ctlproto.MsgType{d}},
		{resource.Status{Disk: resource.DiskDiskless, Conn: resource.ConnStandAlone, Down: true}, adjustSkip{}, nil},
	} {
		if got := adjustActions(c.st, c.skip); !slices.Equal(got, c.want) {
			t.Errorf("%s %s down=%v skip=%+v: %v, want %v", c.st.Disk, c.st.Conn, c.st.Down, c.skip, got, c.want)
		}
	}
}
