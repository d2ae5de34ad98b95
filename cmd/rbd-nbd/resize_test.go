package main

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// resizeCtl serves a fake daemon that answers resize with success and
// status with sts, one after the other (the last one from then on), and
// records the flags each resize request carried ("zero-new",
// "assume-clean", or "" for none) and whether they were sent mandatory.
func resizeCtl(t *testing.T, sts ...resource.Status) (path string, resizes func() []string) {
	t.Helper()
	var mu sync.Mutex
	var got []string
	reads := 0
	h := ctlproto.HandlerFunc(func(ctx context.Context, req *ctlproto.Request) ctlproto.Reply {
		switch req.Header.Type {
		case ctlproto.MsgHello:
			return ctlproto.Reply{Body: ctlproto.EncodeHello(ctlproto.HelloInfo{Version: "test", Major: ctlproto.ProtoMajor, Minor: ctlproto.ProtoMinor})}
		case ctlproto.MsgStatus:
			mu.Lock()
			st := sts[min(reads, len(sts)-1)]
			reads++
			mu.Unlock()
			return ctlproto.Reply{Body: ctlproto.List{ctlproto.EncodeStatus(st, ctlproto.AllFields)}}
		case ctlproto.MsgResize:
			var flags []string
			for _, f := range []struct {
				tag  uint16
				name string
			}{{ctlproto.TagZeroNew, "zero-new"}, {ctlproto.TagAssumeClean, "assume-clean"}} {
				if e, ok := req.Body.Find(f.tag); ok && e.Bool() {
					if !e.Mandatory() {
						f.name += "(optional)"
					}
					flags = append(flags, f.name)
				}
			}
			mu.Lock()
			got = append(got, strings.Join(flags, ","))
			mu.Unlock()
		}
		return ctlproto.Reply{Body: ctlproto.List{ctlproto.U64(ctlproto.TagGeneration, 1)}}
	})
	path = serveCtl(t, ctlproto.DefaultRegistry(), h)
	return path, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}

// resize sends its flags as mandatory tags (an old daemon must refuse
// them, not ignore them and check the range) and prints the disk's
// capacity and the resource's size from the status that follows; while
// the peer has not grown (status.capacity above the size while the node
// stays connected) it says what the resource waits for.
func TestResizeCommand(t *testing.T) {
	waiting := resource.Status{Name: "r0", Role: resource.RoleSecondary, Disk: resource.DiskUpToDate, Conn: resource.ConnConnected,
		PeerDisk: resource.DiskUpToDate, Size: 64 << 20, Capacity: 96 << 20}
	grown := waiting
	grown.Size, grown.Capacity = 96<<20, 0
	// The peer grew before: the growth follows the reply, the summary
	// waits for it (the node reconnects after the Secondary's attach).
	handshake := waiting
	handshake.Conn = resource.ConnHandshake
	for _, tc := range []struct {
		name  string
		sts   []resource.Status
		args  []string
		flags string
		want  string
	}{
		{"waiting for the peer", []resource.Status{waiting}, nil, "",
			"r0: disk capacity 100663296 bytes, resource size 67108864 bytes; the resource grows once the peer's disk holds as much (run resize there; with a peer of an older release, at the pair's next reconnect)\n"},
		{"grown", []resource.Status{grown}, []string{"--zero-new"}, "zero-new", "r0: disk capacity 100663296 bytes, resource size 100663296 bytes\n"},
		{"assume clean", []resource.Status{grown}, []string{"--assume-clean"}, "assume-clean", "r0: disk capacity 100663296 bytes, resource size 100663296 bytes\n"},
		{"grows after the reply", []resource.Status{handshake, waiting, waiting, grown}, nil, "", "r0: disk capacity 100663296 bytes, resource size 100663296 bytes\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock, resizes := resizeCtl(t, tc.sts...)
			out := mustRun(t, sock, append([]string{"resize", "r0"}, tc.args...)...)
			if out != tc.want {
				t.Errorf("stdout %q, want %q", out, tc.want)
			}
			if got := resizes(); len(got) != 1 || got[0] != tc.flags {
				t.Errorf("resize requests carried flags %q, want one with %q", got, tc.flags)
			}
		})
	}
}

// --zero-new and --assume-clean exclude each other: the tool refuses
// before it sends anything.
func TestResizeFlagsExclusive(t *testing.T) {
	sock, resizes := resizeCtl(t, resource.Status{Name: "r0"})
	_, _, err := run(t, sock, "resize", "r0", "--zero-new", "--assume-clean")
	if err == nil || !strings.Contains(err.Error(), "--zero-new and --assume-clean exclude each other") {
		t.Fatalf("resize with both flags: %v", err)
	}
	if got := resizes(); len(got) != 0 {
		t.Fatalf("resize with both flags was sent: %q", got)
	}
}

// A daemon older than resize (control protocol 1.11) knows neither the
// request nor its flags: with a flag too, the refusal names resize, the
// request, not the flag's tag number.
func TestResizeOldDaemonWithFlag(t *testing.T) {
	old := ctlproto.DefaultRegistry().WithoutMsgs(ctlproto.MsgResize).Without(ctlproto.TagZeroNew, ctlproto.TagAssumeClean)
	sock := serveDaemon(t, old, "1.10.0")
	mustRun(t, sock, createArgs...)
	_, _, err := run(t, sock, "resize", "r0", "--zero-new")
	want := "the daemon (version 1.10.0" + protoDesc + ") does not know this command (resize, since control protocol 1.11): upgrade the daemon"
	if err == nil || err.Error() != want {
		t.Fatalf("resize --zero-new on a 1.10 daemon: %v\nwant %s", err, want)
	}
}
