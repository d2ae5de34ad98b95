package daemon

import (
	"bytes"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
)

var update = flag.Bool("update", false, "rewrite the version-1 golden vectors in ../ctlproto/testdata/v1")

// v1Dir holds the golden byte vectors of protocol version 1.0: requests as
// a version-1 client sends them, and the daemon's replies.
const v1Dir = "../ctlproto/testdata/v1"

// v1Config is the configuration the vectors create.
func v1Config() config.Resource {
	return config.Resource{
		Name:  "r0",
		Local: config.Node{Name: "alpha", ID: 0, Address: "10.0.0.1:7789", Disk: "/dev/vdb", NBDListen: "127.0.0.1:10809"},
		Peer:  config.Node{Name: "beta", ID: 1, Address: "10.0.0.2:7789"},
		Net:   config.Net{Protocol: config.ProtocolC, Timeout: 6 * time.Second},
		Handlers: config.Handlers{
			Commands: map[string][]string{"split-brain": {"/usr/lib/rbd-nbd/notify", "split-brain"}},
		},
	}
}

// v1Vectors are the requests of a version-1 client session, in order, and
// how many reply frames each gets.
func v1Vectors() []struct {
	name    string
	typ     ctlproto.MsgType
	body    ctlproto.List
	replies int
} {
	reg := ctlproto.DefaultRegistry()
	name := ctlproto.String(ctlproto.TagResName, "r0").AsMandatory()
	return []struct {
		name    string
		typ     ctlproto.MsgType
		body    ctlproto.List
		replies int
	}{
		{"01-hello", ctlproto.MsgHello, ctlproto.List{ctlproto.String(ctlproto.TagVersion, "1.0.0-client")}, 1},
		{"02-status-empty", ctlproto.MsgStatus, nil, 1},
		{"03-create", ctlproto.MsgCreate, ctlproto.EncodeConfig(reg, v1Config()), 1},
		{"04-status", ctlproto.MsgStatus, nil, 1},
		{"05-change-cas", ctlproto.MsgChange, ctlproto.List{name,
			ctlproto.U64(ctlproto.TagIfGeneration, 1).AsMandatory(),
			ctlproto.Nested(ctlproto.TagNet, ctlproto.String(ctlproto.TagNetProtocol, "A").AsMandatory(), ctlproto.U64(ctlproto.TagNetPingTimeout, 4000)).AsMandatory()}, 1},
		{"06-change-stale", ctlproto.MsgChange, ctlproto.List{name,
			ctlproto.U64(ctlproto.TagIfGeneration, 1).AsMandatory(),
			ctlproto.Nested(ctlproto.TagNet, ctlproto.String(ctlproto.TagNetProtocol, "B").AsMandatory()).AsMandatory()}, 1},
		{"07-change-set-defaults", ctlproto.MsgChange, ctlproto.List{name,
			ctlproto.Flag(ctlproto.TagSetDefaults, true).AsMandatory(),
			ctlproto.Nested(ctlproto.TagNet, ctlproto.String(ctlproto.TagNetProtocol, "B").AsMandatory()).AsMandatory()}, 1},
		{"08-change-invalid", ctlproto.MsgChange, ctlproto.List{name,
			ctlproto.Nested(ctlproto.TagDisk, ctlproto.U32(ctlproto.TagDiskALExtents, 3)).AsMandatory()}, 1},
		{"09-change-unknown-tags", ctlproto.MsgChange, ctlproto.List{name,
			ctlproto.Nested(ctlproto.TagNet, ctlproto.U32(999, 1)).AsMandatory(),
			ctlproto.U8(998, 1).AsMandatory()}, 1},
		{"10-change-optional-unknown", ctlproto.MsgChange, ctlproto.List{name,
			ctlproto.Nested(ctlproto.TagResync, ctlproto.U32(ctlproto.TagResyncWindow, 32), ctlproto.U32(999, 1)).AsMandatory()}, 1},
		{"11-show", ctlproto.MsgShow, ctlproto.List{name}, 1},
		{"12-status-unknown", ctlproto.MsgStatus, ctlproto.List{ctlproto.String(ctlproto.TagResName, "r9").AsMandatory()}, 1},
		{"13-primary", ctlproto.MsgPrimary, ctlproto.List{name}, 1},
		{"14-subscribe", ctlproto.MsgSubscribe, ctlproto.List{name}, 5},
	}
}

// formatHex writes frames as hex: each frame's header on one line, then one
// line per top-level entry.
func formatHex(comment string, data []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# %s\n", comment)
	for len(data) >= ctlproto.HeaderLen {
		h, _ := ctlproto.ParseHeader(data, ctlproto.DefaultLimits())
		fmt.Fprintf(&b, "%s  # header: %s, seq %d, flags %d, %d bytes\n", hex.EncodeToString(data[:ctlproto.HeaderLen]), ctlproto.DefaultRegistry().MsgName(h.Type), h.Seq, h.Flags, h.Length)
		body := data[ctlproto.HeaderLen : ctlproto.HeaderLen+int(h.Length)]
		data = data[ctlproto.HeaderLen+int(h.Length):]
		l, _ := ctlproto.DecodeList(body, ctlproto.DefaultLimits())
		for _, e := range l {
			n := (ctlproto.List{e}).Size()
			fmt.Fprintf(&b, "%s  # %s\n", hex.EncodeToString(body[:n]), ctlproto.DefaultRegistry().TagName(e.Tag))
			body = body[n:]
		}
	}
	return b.Bytes()
}

func readHex(t *testing.T, file string) []byte {
	t.Helper()
	text, err := os.ReadFile(filepath.Join(v1Dir, file))
	if err != nil {
		t.Fatalf("%v (run go test ./daemon -run TestVersion1 -update)", err)
	}
	b, err := ctlproto.ParseHex(text)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return b
}

// TestVersion1ClientAgainstCurrentDaemon replays the recorded requests of a
// version-1 client, byte for byte, against today's daemon, and expects the
// recorded replies byte for byte. It also checks that today's encoder still
// produces the recorded requests.
func TestVersion1ClientAgainstCurrentDaemon(t *testing.T) {
	when := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	e := start(t, Config{Version: "1.0.0-test", Now: func() time.Time { return when }}, nil)
	if *update {
		if err := os.MkdirAll(v1Dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := net.Dial("unix", e.path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	for i, v := range v1Vectors() {
		enc := ctlproto.AppendFrame(nil, ctlproto.Header{Major: 1, Minor: 0, Type: v.typ, Seq: uint32(i + 1)}, v.body)
		reqFile, repFile := v.name+".req.hex", v.name+".reply.hex"
		if *update {
			if err := os.WriteFile(filepath.Join(v1Dir, reqFile), formatHex("version-1 request: "+v.name, enc), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		req := readHex(t, reqFile)
		if !bytes.Equal(req, enc) {
			t.Errorf("%s: today's encoder no longer produces the version-1 request bytes", v.name)
		}
		if _, err := conn.Write(req); err != nil {
			t.Fatal(err)
		}
		var got []byte
		for j := 0; j < v.replies; j++ {
			h, body, err := ctlproto.ReadFrame(conn, nil, ctlproto.DefaultLimits())
			if err != nil {
				t.Fatalf("%s: reply %d: %v", v.name, j, err)
			}
			if h.Seq != uint32(i+1) {
				t.Fatalf("%s: reply seq %d", v.name, h.Seq)
			}
			h.Length = uint32(len(body))
			got = append(ctlproto.AppendHeader(got, h), body...)
		}
		if *update {
			if err := os.WriteFile(filepath.Join(v1Dir, repFile), formatHex("version-1 reply: "+v.name, got), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if want := readHex(t, repFile); !bytes.Equal(got, want) && !sameForVersion1(got, want) {
			var gb, wb strings.Builder
			ctlproto.DefaultRegistry().Dump(&gb, got, ctlproto.DefaultLimits())
			ctlproto.DefaultRegistry().Dump(&wb, want, ctlproto.DefaultLimits())
			t.Errorf("%s: the reply differs from version 1's\n got:\n%s\nwant:\n%s", v.name, gb.String(), wb.String())
		}
	}
}

// sameForVersion1 reports whether two runs of frames differ only in what a
// version-1 client may not rely on: the wording of error messages, which is
// for people, and the daemon's minor version (the header's minor byte and
// hello's proto-minor), which grows with every minor release.
func sameForVersion1(a, b []byte) bool {
	strip := func(data []byte) []byte {
		var out []byte
		for len(data) >= ctlproto.HeaderLen {
			h, err := ctlproto.ParseHeader(data, ctlproto.DefaultLimits())
			if err != nil || len(data) < ctlproto.HeaderLen+int(h.Length) {
				return nil
			}
			l, err := ctlproto.DecodeList(data[ctlproto.HeaderLen:ctlproto.HeaderLen+int(h.Length)], ctlproto.DefaultLimits())
			if err != nil {
				return nil
			}
			data = data[ctlproto.HeaderLen+int(h.Length):]
			h.Minor = 0
			var kept ctlproto.List
			for _, e := range l {
				if e.Tag == ctlproto.TagProtoMinor {
					e = ctlproto.U8(e.Tag, 0)
				}
				if e.Tag == ctlproto.TagError {
					var sec ctlproto.List
					for _, f := range e.List() {
						if f.Tag != ctlproto.TagErrorMessage {
							sec = append(sec, f)
						}
					}
					e = ctlproto.Nested(ctlproto.TagError, sec...)
				}
				kept = append(kept, e)
			}
			out = ctlproto.AppendFrame(out, h, kept)
		}
		return out
	}
	sa, sb := strip(a), strip(b)
	return sa != nil && bytes.Equal(sa, sb)
}
