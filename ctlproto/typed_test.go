package ctlproto

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

func sampleStatus() resource.Status {
	return resource.Status{
		Name: "r0", Role: resource.RolePrimary, Disk: resource.DiskUpToDate, Conn: resource.ConnSyncSource,
		PeerRole: resource.RoleSecondary, PeerDisk: resource.DiskInconsistent, Size: 1 << 30, OutOfSync: 4096,
		ResyncDone: 100, ResyncTotal: 200, ResyncRate: 300, ResyncETA: 12, ResyncedBytes: 400,
		WritesInFlight: 5, NBDConnections: 2, CurrentUUID: 0xfeedface, PeerNodeID: 1, Generation: 7, Suspended: resource.SuspendUser | resource.SuspendFencing,
		SyncPaused: true, Capacity: 2 << 30, Verify: resource.VerifyInterrupted, VerifyFound: 8192, Down: true, LinkError: "replicate: peer disconnected: refused", DiskError: "read b.img: input/output error",
	}
}

func sampleConfig() config.Resource {
	return config.Resource{
		Name:   "r0",
		Local:  config.Node{Name: "alpha", ID: 0, Address: "127.0.0.1:7789", Disk: "/dev/loop0", NBDListen: "127.0.0.1:10809"},
		Peer:   config.Node{Name: "beta", ID: 1, Address: "127.0.0.1:7790", Disk: "/dev/loop1"},
		Net:    config.Net{Protocol: config.ProtocolB, SharedSecret: "s3cret", Timeout: 7 * time.Second, MaxProtocolVersion: 2},
		Disk:   config.DiskOptions{ALExtents: 100, DirectIO: true},
		Resync: config.ResyncOptions{Rate: 10 << 20, Csums: config.CsumsXXHash},
		Handlers: config.Handlers{
			Dispatcher: []string{"/usr/lib/rbd-nbd/dispatch", "--verbose"},
			Commands:   map[string][]string{"before-resync-target": {"/bin/true"}, "split-brain": {"/bin/echo", "sb"}},
			Timeout:    5 * time.Second,
		},
	}.Default()
}

// roundTrip sends a body through the wire and the registry check.
func roundTrip(t *testing.T, reg *Registry, msg MsgType, body List) List {
	t.Helper()
	l, err := DecodeList(body.Append(nil), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	res, err := reg.CheckRequest(msg, l)
	if err != nil || len(res.Ignored)+len(res.UnknownMandatory) > 0 {
		t.Fatalf("check: %+v %v", res, err)
	}
	return l
}

func TestConfigRoundTrip(t *testing.T) {
	reg := DefaultRegistry()
	cfg := sampleConfig()
	body := roundTrip(t, reg, MsgCreate, EncodeConfig(reg, cfg))
	p := DecodeConfig(body)
	got := p.Apply(config.Resource{}, true)
	if !reflect.DeepEqual(got, cfg) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, cfg)
	}
	for _, e := range body {
		if !e.Mandatory() {
			t.Errorf("section %d not mandatory", e.Tag)
		}
	}
	if e, _ := body.Find(TagNet); !mustFind(t, e.List(), TagNetProtocol).Mandatory() || mustFind(t, e.List(), TagNetTimeout).Mandatory() {
		t.Errorf("mandatory bits do not follow the registry")
	}
}

// TestConfigTagsSince1_1 checks the rule for fields added after 1.0: left
// out while empty (a 1.0 daemon sees the request it always saw), sent
// mandatory when set (a 1.0 daemon refuses it instead of ignoring it).
func TestConfigTagsSince1_1(t *testing.T) {
	reg := DefaultRegistry()
	tlsTags := []uint16{TagResourceNBDTLSCert, TagResourceNBDTLSKey, TagResourceNBDTLSClientCA, TagResourceNBDTLSMode}
	plain := EncodeConfig(reg, sampleConfig())
	res, _ := plain.Find(TagResource)
	for _, tag := range tlsTags {
		if _, ok := res.List().Find(tag); ok {
			t.Errorf("tag %d sent while empty", tag)
		}
	}
	old := reg.Without(tlsTags...)
	if r, err := old.CheckRequest(MsgCreate, roundTrip(t, reg, MsgCreate, plain)); err != nil || len(r.UnknownMandatory)+len(r.Ignored) > 0 {
		t.Fatalf("a 1.0 registry on a request without TLS: %+v %v", r, err)
	}

	cfg := sampleConfig()
	cfg.Local.NBDTLS = config.NBDTLS{Cert: "/c.pem", Key: "/k.pem", ClientCA: "/ca.pem", Mode: config.TLSRequire}
	body := roundTrip(t, reg, MsgCreate, EncodeConfig(reg, cfg))
	if got := DecodeConfig(body).Apply(config.Resource{}, true); !reflect.DeepEqual(got, cfg) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got.Local, cfg.Local)
	}
	res, _ = body.Find(TagResource)
	for _, tag := range tlsTags {
		if !mustFind(t, res.List(), tag).Mandatory() {
			t.Errorf("tag %d not mandatory", tag)
		}
	}
	r, err := old.CheckRequest(MsgCreate, body)
	if err != nil || !reflect.DeepEqual(r.UnknownMandatory, tlsTags) {
		t.Fatalf("a 1.0 registry on a request with TLS: %+v %v", r, err)
	}
}

func mustFind(t *testing.T, l List, tag uint16) Entry {
	t.Helper()
	e, ok := l.Find(tag)
	if !ok {
		t.Fatalf("tag %d missing", tag)
	}
	return e
}

func TestEncodeConfigOldRegistry(t *testing.T) {
	old := DefaultRegistry().Without(TagResyncLatencyTarget)
	body := EncodeConfig(old, sampleConfig())
	rs, _ := body.Find(TagResync)
	if _, ok := rs.List().Find(TagResyncLatencyTarget); ok {
		t.Fatalf("a tag the registry lacks was encoded")
	}
}

func TestConfigPatchApply(t *testing.T) {
	reg := DefaultRegistry()
	base := sampleConfig()
	sections := func(es ...Entry) List {
		l, err := reg.Sections(es)
		if err != nil {
			t.Fatal(err)
		}
		return roundTrip(t, reg, MsgChange, l)
	}

	// Overlay: only the given field changes.
	p := DecodeConfig(sections(String(TagNetProtocol, "A")))
	got := p.Apply(base, false).Default()
	want := base
	want.Net.Protocol = config.ProtocolA
	if !reflect.DeepEqual(got, want) {
		t.Errorf("overlay:\n got %+v\nwant %+v", got.Net, want.Net)
	}

	// Set-defaults: the rest of the net section returns to defaults; other
	// sections stay.
	got = p.Apply(base, true).Default()
	want = base
	want.Net = config.Net{Protocol: config.ProtocolA}.Default()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("set-defaults:\n got %+v\nwant %+v", got, want)
	}

	// Handlers: overlay replaces one handler and removes another.
	p = DecodeConfig(sections(HandlerEntry("split-brain", nil), HandlerEntry("fence-peer", []string{"/bin/fence"})))
	got = p.Apply(base, false)
	wantCmds := map[string][]string{"before-resync-target": {"/bin/true"}, "fence-peer": {"/bin/fence"}}
	if !reflect.DeepEqual(got.Handlers.Commands, wantCmds) || !reflect.DeepEqual(got.Handlers.Dispatcher, base.Handlers.Dispatcher) {
		t.Errorf("handlers overlay: %+v", got.Handlers)
	}
	if _, ok := base.Handlers.Commands["fence-peer"]; ok {
		t.Errorf("Apply modified its base")
	}

	// Set-defaults on the resource section keeps the name.
	p = DecodeConfig(sections(String(TagResourceDisk, "/dev/loop9")))
	got = p.Apply(base, true)
	if got.Name != "r0" || got.Local.Disk != "/dev/loop9" || got.Local.Address != "" {
		t.Errorf("resource set-defaults: %+v", got)
	}
}

func TestParseValue(t *testing.T) {
	reg := DefaultRegistry()
	tag := func(name string) Tag {
		tg, ok := reg.TagByName(name)
		if !ok {
			t.Fatalf("no tag %s", name)
		}
		return tg
	}
	ok := []struct {
		tag, in string
		want    uint64
	}{
		{"net.timeout", "5s", 5000},
		{"net.timeout", "250", 250},
		{"net.max-in-flight-bytes", "64M", 64 << 20},
		{"net.max-in-flight-bytes", "2KiB", 2048},
		{"disk.al-extents", "1237", 1237},
		{"disk.direct-io", "true", 1},
		{"resync.latency-target", "off", LatencyTargetOffMillis},
		{"resync.latency-target", "0", 0},
	}
	for _, c := range ok {
		e, err := ParseValue(tag(c.tag), c.in)
		if err != nil || e.Uint() != c.want {
			t.Errorf("%s %q = %d, %v; want %d", c.tag, c.in, e.Uint(), err, c.want)
		}
	}
	if e, _ := ParseValue(tag("net.protocol"), "B"); e.Text() != "B" || !e.Mandatory() {
		t.Errorf("string: %+v", e)
	}
	for _, c := range []struct{ tag, in string }{
		{"net.timeout", "soon"}, {"net.timeout", "off"}, {"disk.al-extents", "-1"}, {"disk.al-extents", "99999999999"}, {"disk.direct-io", "maybe"}, {"net.max-in-flight-bytes", "12Q"},
	} {
		_, err := ParseValue(tag(c.tag), c.in)
		if !IsCode(err, CodeInvalidValue) {
			t.Errorf("%s %q: err %v, want INVALID_VALUE", c.tag, c.in, err)
		}
	}
}

func TestStatusRoundTrip(t *testing.T) {
	reg := DefaultRegistry()
	st := sampleStatus()
	l, err := DecodeList(List{EncodeStatus(st, AllFields)}.Append(nil), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.CheckReply(l); err != nil {
		t.Fatal(err)
	}
	got, set := DecodeStatus(l[0].List())
	if got != st || set != AllFields {
		t.Fatalf("got %+v (%b)\nwant %+v", got, set, st)
	}
	if d := StatusDiff(st, got); d != 0 {
		t.Fatalf("diff of equal statuses: %b", d)
	}
	st2 := st
	st2.Role = resource.RoleSecondary
	st2.OutOfSync = 0
	if d := StatusDiff(st, st2); d != Fields(FieldRole, FieldOutOfSync) {
		t.Fatalf("diff = %b", d)
	}
}

func TestStatisticsRoundTrip(t *testing.T) {
	reg := DefaultRegistry()
	st := sampleStatus()
	st.IO = resource.IOStats{Reads: 1, ReadBytes: 2, Writes: 3, WrittenBytes: 4, Trims: 5, TrimmedBytes: 6,
		Zeroes: 7, ZeroedBytes: 8, Flushes: 9, Errors: 10, WriteTime: 1 << 40}
	st.Link = resource.LinkStats{Connects: 11, SentBytes: 12, ReceivedBytes: 13, PingRTT: 14}
	st.Meta = resource.MetaStats{ALWrites: 15, BitmapWrites: 16}
	st.IO.WriteLatency[0], st.IO.WriteLatency[3], st.IO.WriteLatency[len(st.IO.WriteLatency)-1] = 17, 18, 19
	l, err := DecodeList(List{EncodeStatusStatistics(st, AllFields)}.Append(nil), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.CheckReply(l); err != nil {
		t.Fatal(err)
	}
	got, set := DecodeStatus(l[0].List())
	ok := DecodeStatistics(l[0].List(), &got)
	if !ok || got != st || set != AllFields {
		t.Fatalf("got %+v (%v, %b)\nwant %+v", got, ok, set, st)
	}
	// Without the section (plain status, a 1.1 daemon), or with a malformed
	// one: no statistics; unknown and mistyped counters are skipped.
	var none resource.Status
	if DecodeStatistics(EncodeStatus(st, AllFields).List(), &none) {
		t.Error("statistics in a plain status")
	}
	if DecodeStatistics(List{U64(TagStatusStatistics, 1)}, &none) {
		t.Error("statistics from a u64")
	}
	// A histogram with other bounds than this build's is left out.
	var other resource.Status
	if !DecodeStatistics(List{Nested(TagStatusStatistics, U64(TagStatsWriteLatencyBound, 1), U64(TagStatsWriteLatencyCount, 2),
		U64(TagStatsWriteLatencyCount, 3))}, &other) || other.IO.WriteLatency != [len(other.IO.WriteLatency)]uint64{} {
		t.Errorf("foreign histogram: %+v", other.IO)
	}
	var part resource.Status
	ok = DecodeStatistics(List{Nested(TagStatusStatistics, U64(TagStatsReads, 4), U32(TagStatsWrites, 5), U64(999, 6), U64(TagStatsBitmapWrites, 7))}, &part)
	if !ok || part.IO != (resource.IOStats{Reads: 4}) || part.Meta.BitmapWrites != 7 {
		t.Errorf("partial statistics: %+v %v", part, ok)
	}
	// An old client's registry (1.1) skips the section as unknown optional.
	old := DefaultRegistry().Without(TagStatusStatistics, TagStatsReads, TagStatsReadBytes, TagStatsWrites, TagStatsWrittenBytes,
		TagStatsTrims, TagStatsTrimmedBytes, TagStatsZeroes, TagStatsZeroedBytes, TagStatsFlushes, TagStatsErrors, TagStatsWriteTime,
		TagStatsLinkConnects, TagStatsLinkSentBytes, TagStatsLinkReceivedBytes, TagStatsPingRTT, TagStatsALWrites, TagStatsBitmapWrites,
		TagStatsWriteLatencyBound, TagStatsWriteLatencyCount)
	if _, err := old.CheckReply(l); err != nil {
		t.Fatalf("a 1.1 client refuses a reply with statistics: %v", err)
	}
}

func TestEventRoundTripAndText(t *testing.T) {
	when := time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC)
	st := sampleStatus()
	cases := []struct {
		ev   Event
		text string
	}{
		{Event{Kind: EventChange, Object: ObjectResource, Time: when, Status: st, Fields: Fields(FieldName, FieldRole)},
			"2025-01-02T03:04:05.000006Z change resource name:r0 role:Primary"},
		{Event{Kind: EventExists, Object: ObjectConnection, Time: when, Status: st, Fields: ObjectFields(ObjectConnection)},
			`2025-01-02T03:04:05.000006Z exists connection name:r0 peer-node-id:1 connection:SyncSource peer-role:Secondary link-error:"replicate: peer disconnected: refused"`},
		{Event{Kind: EventExists, Object: ObjectNone, Time: when}, "2025-01-02T03:04:05.000006Z exists -"},
		{Event{Kind: EventCall, Object: ObjectHelper, Time: when, Status: resource.Status{Name: "r0"}, Fields: Fields(FieldName), Hook: "split-brain", HookID: 3},
			"2025-01-02T03:04:05.000006Z call helper name:r0 helper:split-brain id:3"},
		{Event{Kind: EventResponse, Object: ObjectHelper, Time: when, Status: resource.Status{Name: "r0"}, Fields: Fields(FieldName), Hook: "split-brain", HookID: 3, HookExit: -1, HookError: "killed"},
			`2025-01-02T03:04:05.000006Z response helper name:r0 helper:split-brain id:3 status:-1 error:"killed"`},
	}
	reg := DefaultRegistry()
	for _, c := range cases {
		l, err := DecodeList(c.ev.Body().Append(nil), DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.CheckReply(l); err != nil {
			t.Fatal(err)
		}
		got, err := DecodeEvent(l)
		if err != nil {
			t.Fatal(err)
		}
		if txt := got.Text(true); txt != c.text {
			t.Errorf("text\n got %s\nwant %s", txt, c.text)
		}
		if txt := got.Text(false); txt != c.text[len("2025-01-02T03:04:05.000006Z "):] {
			t.Errorf("text without time: %s", txt)
		}
		var m map[string]any
		b, _ := json.Marshal(got)
		if err := json.Unmarshal(b, &m); err != nil || m["kind"] != c.ev.Kind.String() {
			t.Errorf("json %s: %v", b, err)
		}
	}
	if !strings.HasPrefix(string(mustJSON(t, cases[0].ev)), `{"time":"2025-01-02T03:04:05.000006Z","kind":"change","object":"resource","name":"r0","role":"Primary"}`) {
		t.Errorf("json = %s", mustJSON(t, cases[0].ev))
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestErrorRoundTrip(t *testing.T) {
	e := &Error{Code: CodeUnknownMandatoryTag, Message: "m", Path: "net.protocol", Value: "v", Allowed: "a", Tags: []uint16{50, 51}, State: "up", Generation: 3}
	l, err := DecodeList(List{EncodeError(e)}.Append(nil), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	got := DecodeError(l)
	if !reflect.DeepEqual(got, e) {
		t.Fatalf("got %+v want %+v", got, e)
	}
	if s := got.Error(); !strings.Contains(s, "UNKNOWN_MANDATORY_TAG") || !strings.Contains(s, "net.protocol") {
		t.Fatalf("Error() = %s", s)
	}
}

// A status reply with statistics of MaxResources resources, every field
// present and names of the longest length, fits ReplyLimits with room to
// spare (half the limits), so a client decodes whatever a daemon sends.
func TestReplyLimitsHoldMaxResources(t *testing.T) {
	st := resource.Status{Name: strings.Repeat("n", 64), Suspended: 1, Size: math.MaxUint64, Generation: math.MaxUint64}
	for i := range st.IO.WriteLatency {
		st.IO.WriteLatency[i] = math.MaxUint64
	}
	body := make(List, 0, MaxResources)
	for range MaxResources {
		body = append(body, EncodeStatusStatistics(st, AllFields))
	}
	raw := body.Append(nil)
	lim := ReplyLimits()
	if err := lim.Validate(); err != nil {
		t.Fatal(err)
	}
	half := lim
	half.MaxFrame, half.MaxEntries = lim.MaxFrame/2, lim.MaxEntries/2
	if len(raw) > half.MaxFrame {
		t.Fatalf("status of %d resources: %d bytes, more than half of ReplyLimits().MaxFrame %d", MaxResources, len(raw), lim.MaxFrame)
	}
	if _, err := DecodeList(raw, half); err != nil {
		t.Fatalf("status of %d resources does not fit half of ReplyLimits: %v", MaxResources, err)
	}
	// Requests keep the smaller limits.
	if _, err := DecodeList(raw, DefaultLimits()); !errors.Is(err, ErrTooManyEntries) && !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("DefaultLimits accept the reply: %v", err)
	}
}

// resync.latency-target: off (config.LatencyTargetOff) is 2^64-1 on the
// wire and back, as is any value from the largest duration up; 0 stays
// the unset value that takes the default.
func TestLatencyTargetOffOnTheWire(t *testing.T) {
	reg := DefaultRegistry()
	cfg := config.Resource{Resync: config.ResyncOptions{LatencyTarget: config.LatencyTargetOff}}
	secs := EncodeConfig(reg, cfg)
	rs, _ := secs.Find(TagResync)
	if e, _ := rs.List().Find(TagResyncLatencyTarget); e.Uint() != LatencyTargetOffMillis {
		t.Fatalf("off encoded as %d", e.Uint())
	}
	if got := DecodeConfig(secs).Apply(config.Resource{}, true).Resync.LatencyTarget; got != config.LatencyTargetOff {
		t.Fatalf("off decoded as %v", got)
	}
	for ms, want := range map[uint64]time.Duration{
		0: 0, 7: 7 * time.Millisecond, DurationToMillis(config.LatencyTargetOff): config.LatencyTargetOff, LatencyTargetOffMillis - 1: config.LatencyTargetOff,
	} {
		l := List{Nested(TagResync, U64(TagResyncLatencyTarget, ms))}
		if got := DecodeConfig(l).Apply(config.Resource{}, true).Resync.LatencyTarget; got != want {
			t.Errorf("wire %d decoded as %v, want %v", ms, got, want)
		}
	}
}
