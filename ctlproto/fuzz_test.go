package ctlproto

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/resource"
)

// v1Vectors returns the golden version-1 frames (written by the daemon
// package's TestVersion1ClientAgainstCurrentDaemon).
func v1Vectors(t testing.TB) map[string][]byte {
	files, err := filepath.Glob(filepath.Join("testdata", "v1", "*.hex"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no version-1 vectors in testdata/v1: %v", err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		text, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ParseHex(text)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[filepath.Base(f)] = b
	}
	return out
}

// TestVersion1Vectors decodes every golden version-1 frame with today's
// codec and registry: the requests check as requests, the replies as
// replies, and each re-encodes to the same bytes.
func TestVersion1Vectors(t *testing.T) {
	reg := DefaultRegistry()
	lim := DefaultLimits()
	for name, data := range v1Vectors(t) {
		for len(data) > 0 {
			h, err := ParseHeader(data, lim)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			body := data[HeaderLen : HeaderLen+int(h.Length)]
			data = data[HeaderLen+int(h.Length):]
			l, err := DecodeList(body, lim)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if !bytes.Equal(l.Append(nil), body) {
				t.Errorf("%s: re-encoding differs", name)
			}
			var res CheckResult
			if strings.HasSuffix(name, ".req.hex") {
				res, err = reg.CheckRequest(h.Type, l)
			} else {
				res, err = reg.CheckReply(l)
			}
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			if !strings.Contains(name, "unknown") && len(res.Ignored)+len(res.UnknownMandatory) > 0 {
				t.Errorf("%s: today's registry does not know tags %v %v", name, res.Ignored, res.UnknownMandatory)
			}
		}
		var out strings.Builder
		if err := reg.Dump(&out, v1Vectors(t)[name], lim); err != nil {
			t.Errorf("%s: Dump: %v", name, err)
		}
	}
}

func TestDump(t *testing.T) {
	reg := DefaultRegistry()
	f := AppendFrame(nil, Header{Major: 1, Type: MsgChange, Seq: 5}, List{
		String(TagResName, "r0").AsMandatory(),
		Nested(TagNet, String(TagNetProtocol, "A"), U64(TagNetTimeout, 6000), U32(999, 7).AsMandatory()),
		Nested(TagStatus, U8(TagStatusRole, 2)),
	})
	var b strings.Builder
	if err := reg.Dump(&b, f, DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	want := `frame 0: change (5), protocol 1.0, flags none, seq 5, 72 bytes
  res-name (10) string mandatory "r0"
  net (3) list [3]
    net.protocol (50) string "A"
    net.timeout (55) u64 6000 (6s)
    tag 999 (unknown) u32 mandatory 7
  status (7) list [1]
    status.role (101) u8 2 (Primary)
`
	if b.String() != want {
		t.Fatalf("Dump:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	if err := reg.Dump(&b, f[:30], DefaultLimits()); err == nil || !strings.Contains(b.String(), "cut short") {
		t.Fatalf("Dump of a cut frame: %v\n%s", err, b.String())
	}
}

// FuzzDecodeFrame feeds arbitrary bytes through everything that reads a
// frame: header, tag list, registry check, typed decoders and Dump. None may
// panic, errors must carry a code, whatever decodes must re-encode to the
// same bytes, and ReadFrame reads the frame the header declares and not a
// byte past it.
func FuzzDecodeFrame(f *testing.F) {
	for _, v := range v1Vectors(f) {
		f.Add(v)
	}
	f.Add(AppendFrame(nil, Header{Major: 1, Type: MsgChange}, sampleList()))
	f.Add(AppendFrame(nil, Header{Major: 1, Type: MsgStatus, Flags: FlagReply}, List{EncodeStatus(sampleStatus(), AllFields)}))
	f.Add(AppendFrame(nil, Header{Major: 1, Type: MsgCreate}, EncodeConfig(DefaultRegistry(), sampleConfig())))
	f.Add([]byte("RBNC"))
	reg := DefaultRegistry()
	lim := DefaultLimits()
	lim.MaxEntries = 512
	lim.MaxFrame = 64 << 10
	f.Fuzz(func(t *testing.T, data []byte) {
		reg.Dump(io.Discard, data, lim)
		rh, rbody, rerr := ReadFrame(bytes.NewReader(data), nil, lim)
		h, err := ParseHeader(data, lim)
		switch {
		case err == nil && len(data) >= HeaderLen+int(h.Length):
			if rerr != nil || rh != h || !bytes.Equal(rbody, data[HeaderLen:HeaderLen+int(h.Length)]) {
				t.Fatalf("ReadFrame = %+v, %d bytes, %v; ParseHeader %+v", rh, len(rbody), rerr, h)
			}
			// A second frame starts right after the declared body.
			r := bytes.NewReader(data)
			ReadFrame(r, nil, lim)
			if r.Len() != len(data)-HeaderLen-int(h.Length) {
				t.Fatalf("ReadFrame left %d bytes, want %d", r.Len(), len(data)-HeaderLen-int(h.Length))
			}
		case err == nil && len(data) == HeaderLen+int(h.Length)-1, len(data) > 0 && len(data) < HeaderLen:
			if !errors.Is(rerr, ErrTruncated) {
				t.Fatalf("ReadFrame of a cut frame: %v, want ErrTruncated", rerr)
			}
		}
		if err != nil {
			if CodeOf(err) == CodeOK || CodeOf(err) == CodeInternal {
				t.Fatalf("header error without a code: %v", err)
			}
			return
		}
		body := data[HeaderLen:]
		if len(body) > int(h.Length) {
			body = body[:h.Length]
		}
		l, err := DecodeList(body, lim)
		if err != nil {
			if c := CodeOf(err); c != CodeMalformed && c != CodeLimitExceeded {
				t.Fatalf("decode error with code %v: %v", c, err)
			}
			return
		}
		if !bytes.Equal(l.Append(nil), body) {
			t.Fatalf("re-encoding differs:\n% x\n% x", l.Append(nil), body)
		}
		for _, check := range []func() (CheckResult, error){
			func() (CheckResult, error) { return reg.CheckRequest(h.Type, l) },
			func() (CheckResult, error) { return reg.CheckReply(l) },
		} {
			res, err := check()
			if err != nil {
				continue
			}
			DecodeConfig(res.Body).Apply(sampleConfig(), h.Flags&1 != 0)
			DecodeEvent(res.Body)
			DecodeError(res.Body)
			DecodeHello(res.Body)
			for e := range res.Body.All(TagStatus) {
				st, set := DecodeStatus(e.List())
				// What a client decodes, encoded again (as a change
				// event does, every field of set), decodes the same.
				if again, _ := DecodeStatus(statusFields(st, set, true)); !reflect.DeepEqual(again, st) {
					t.Fatalf("status round trip:\n got %+v\nwant %+v", again, st)
				}
				DecodeStatistics(e.List(), &st)
			}
		}
	})
}

// fuzzHandler answers hello and status, and refuses other requests with
// an error quoting the resource name, as the daemon's refusals do.
type fuzzHandler struct{}

func (fuzzHandler) ServeCtl(_ context.Context, req *Request) Reply {
	switch req.Header.Type {
	case MsgHello:
		return Reply{Body: EncodeHello(HelloInfo{Version: "fuzz", Major: ProtoMajor, Minor: ProtoMinor})}
	case MsgStatus:
		return Reply{Body: List{EncodeStatus(resource.Status{Name: "r0"}, AllFields)}}
	}
	name, _ := req.Body.Find(TagResName)
	return Reply{Err: &Error{Code: CodeUnknownResource, Message: fmt.Sprintf("no resource %q", name.Text()), Value: name.Text()}}
}

// FuzzServe sends arbitrary bytes to a control server as a client's whole
// stream. Whatever the client sends, the server answers with frames a
// client decodes (within ReplyLimits, registered reply tags, an error
// section with a code in every error reply) and, once the client's side
// is closed, ends the connection.
func FuzzServe(f *testing.F) {
	for _, v := range v1Vectors(f) {
		f.Add(v)
	}
	f.Add(AppendFrame(nil, Header{Major: 1, Type: MsgChange}, List{String(TagResName, strings.Repeat("\x01", 8000)).AsMandatory()}))
	f.Add(AppendFrame(nil, Header{Major: 1, Type: MsgStatus}, List{U32(999, 1).AsMandatory(), U32(998, 1).AsMandatory()}))
	f.Add(AppendFrame(nil, Header{Major: 2, Type: MsgHello}, nil))
	f.Add(AppendHeader(nil, Header{Major: 1, Type: MsgHello, Length: 1 << 30}))
	f.Add([]byte("RBNC\x01"))

	path := filepath.Join(f.TempDir(), "ctl.sock")
	l, err := Listen(path, DefaultListenConfig())
	if err != nil {
		f.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Handler, cfg.Registry, cfg.Limits, cfg.WriteTimeout = fuzzHandler{}, DefaultRegistry(), DefaultLimits(), 5*time.Second
	srv, err := NewServer(cfg)
	if err != nil {
		f.Fatal(err)
	}
	go srv.Serve(l)
	f.Cleanup(func() { srv.Close() })
	reg, lim := DefaultRegistry(), ReplyLimits()

	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		out := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(c)
			out <- b
		}()
		c.Write(in) // the server may hang up first
		c.(*net.UnixConn).CloseWrite()
		r := bytes.NewReader(<-out)
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the server did not end the connection after the client's side closed")
		}
		for r.Len() > 0 {
			h, body, err := ReadFrame(r, nil, lim)
			if err != nil {
				t.Fatalf("reply frame: %v", err)
			}
			rl, err := DecodeList(body, lim)
			if err != nil {
				t.Fatalf("reply body: %v", err)
			}
			res, err := reg.CheckReply(rl)
			if err != nil || len(res.UnknownMandatory) > 0 {
				t.Fatalf("reply %+v: %v, unknown mandatory %v", h, err, res.UnknownMandatory)
			}
			if h.Flags&FlagError != 0 {
				if e := DecodeError(res.Body); e.Code == CodeOK {
					t.Fatalf("error reply without a code: %+v", e)
				}
			}
		}
	})
}
