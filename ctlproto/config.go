package ctlproto

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/rbd-nbd/rbd-nbd/config"
)

// configSections returns the configuration sections in wire order.
func configSections() [6]uint16 {
	return [...]uint16{TagResource, TagPeer, TagNet, TagDisk, TagResync, TagHandlers}
}

// binding ties a scalar configuration tag to its config.Resource field.
// omitEmpty marks fields added after 1.0: EncodeConfig leaves them out at
// their zero value, so that a tool that does not use them still drives a
// daemon that predates them, and one that does gets UNKNOWN_MANDATORY_TAG
// naming them instead of a silently ignored setting. It needs a field
// whose zero value is its default (an explicit zero could not be sent).
type binding struct {
	tag       uint16
	section   uint16
	get       func(*config.Resource) Entry
	set       func(*config.Resource, Entry)
	omitEmpty bool
}

// omitWhenZero marks b as a field added after 1.0 (see binding).
func omitWhenZero(b binding) binding {
	b.omitEmpty = true
	return b
}

func strB(sec, tag uint16, f func(*config.Resource) *string) binding {
	return binding{tag: tag, section: sec,
		get: func(r *config.Resource) Entry { return String(tag, *f(r)) },
		set: func(r *config.Resource, e Entry) { *f(r) = e.Text() }}
}

func u32B(sec, tag uint16, f func(*config.Resource) *uint32) binding {
	return binding{tag: tag, section: sec,
		get: func(r *config.Resource) Entry { return U32(tag, *f(r)) },
		set: func(r *config.Resource, e Entry) { *f(r) = uint32(e.Uint()) }}
}

func u64B(sec, tag uint16, f func(*config.Resource) *uint64) binding {
	return binding{tag: tag, section: sec,
		get: func(r *config.Resource) Entry { return U64(tag, *f(r)) },
		set: func(r *config.Resource, e Entry) { *f(r) = e.Uint() }}
}

func boolB(sec, tag uint16, f func(*config.Resource) *bool) binding {
	return binding{tag: tag, section: sec,
		get: func(r *config.Resource) Entry { return Flag(tag, *f(r)) },
		set: func(r *config.Resource, e Entry) { *f(r) = e.Bool() }}
}

func durB(sec, tag uint16, f func(*config.Resource) *time.Duration) binding {
	return binding{tag: tag, section: sec,
		get: func(r *config.Resource) Entry { return U64(tag, DurationToMillis(*f(r))) },
		set: func(r *config.Resource, e Entry) { *f(r) = MillisToDuration(e.Uint()) }}
}

// LatencyTargetOffMillis is resync.latency-target's wire value for
// config.LatencyTargetOff; any value from DurationToMillis of it up means
// off too.
const LatencyTargetOffMillis = math.MaxUint64

// latencyTargetB binds resync.latency-target: a duration whose largest
// value, config.LatencyTargetOff, is sent as LatencyTargetOffMillis.
func latencyTargetB(sec uint16) binding {
	tag := TagResyncLatencyTarget
	return binding{tag: tag, section: sec,
		get: func(r *config.Resource) Entry {
			if r.Resync.LatencyTarget == config.LatencyTargetOff {
				return U64(tag, LatencyTargetOffMillis)
			}
			return U64(tag, DurationToMillis(r.Resync.LatencyTarget))
		},
		set: func(r *config.Resource, e Entry) {
			if e.Uint() >= DurationToMillis(config.LatencyTargetOff) {
				r.Resync.LatencyTarget = config.LatencyTargetOff
				return
			}
			r.Resync.LatencyTarget = MillisToDuration(e.Uint())
		}}
}

// DurationToMillis converts a duration to its wire form, whole
// milliseconds; negative durations become 0.
func DurationToMillis(d time.Duration) uint64 {
	if d < 0 {
		return 0
	}
	return uint64(d / time.Millisecond)
}

// MillisToDuration converts wire milliseconds to a duration, saturating at
// the largest duration.
func MillisToDuration(ms uint64) time.Duration {
	if ms > uint64(math.MaxInt64/int64(time.Millisecond)) {
		return math.MaxInt64
	}
	return time.Duration(ms) * time.Millisecond
}

// bindings lists every scalar configuration field; the handlers section's
// dispatcher and handler lists are handled apart.
func bindings() []binding {
	res, peer, net, disk, rs, hd := TagResource, TagPeer, TagNet, TagDisk, TagResync, TagHandlers
	return []binding{
		strB(res, TagResourceName, func(r *config.Resource) *string { return &r.Name }),
		strB(res, TagResourceNodeName, func(r *config.Resource) *string { return &r.Local.Name }),
		u32B(res, TagResourceNodeID, func(r *config.Resource) *uint32 { return &r.Local.ID }),
		strB(res, TagResourceAddress, func(r *config.Resource) *string { return &r.Local.Address }),
		strB(res, TagResourceDisk, func(r *config.Resource) *string { return &r.Local.Disk }),
		strB(res, TagResourceMetaDisk, func(r *config.Resource) *string { return &r.Local.Meta }),
		strB(res, TagResourceNBDListen, func(r *config.Resource) *string { return &r.Local.NBDListen }),
		strB(res, TagResourceExport, func(r *config.Resource) *string { return &r.Local.Export }),
		omitWhenZero(strB(res, TagResourceNBDTLSCert, func(r *config.Resource) *string { return &r.Local.NBDTLS.Cert })),
		omitWhenZero(strB(res, TagResourceNBDTLSKey, func(r *config.Resource) *string { return &r.Local.NBDTLS.Key })),
		omitWhenZero(strB(res, TagResourceNBDTLSClientCA, func(r *config.Resource) *string { return &r.Local.NBDTLS.ClientCA })),
		omitWhenZero(strB(res, TagResourceNBDTLSMode, func(r *config.Resource) *string { return (*string)(&r.Local.NBDTLS.Mode) })),
		omitWhenZero(strB(res, TagResourceLinkTLSCert, func(r *config.Resource) *string { return &r.Local.LinkTLS.Cert })),
		omitWhenZero(strB(res, TagResourceLinkTLSKey, func(r *config.Resource) *string { return &r.Local.LinkTLS.Key })),
		omitWhenZero(u32B(res, TagResourceNBDMaxConnections, func(r *config.Resource) *uint32 { return &r.Local.NBDMaxConnections })),
		omitWhenZero(boolB(res, TagResourceAutoPromote, func(r *config.Resource) *bool { return &r.Local.AutoPromote })),
		omitWhenZero(durB(res, TagResourceAutoPromoteTimeout, func(r *config.Resource) *time.Duration { return &r.Local.AutoPromoteTimeout })),

		strB(peer, TagPeerNodeName, func(r *config.Resource) *string { return &r.Peer.Name }),
		u32B(peer, TagPeerNodeID, func(r *config.Resource) *uint32 { return &r.Peer.ID }),
		strB(peer, TagPeerAddress, func(r *config.Resource) *string { return &r.Peer.Address }),
		strB(peer, TagPeerDisk, func(r *config.Resource) *string { return &r.Peer.Disk }),
		strB(peer, TagPeerMetaDisk, func(r *config.Resource) *string { return &r.Peer.Meta }),
		strB(peer, TagPeerNBDListen, func(r *config.Resource) *string { return &r.Peer.NBDListen }),
		strB(peer, TagPeerExport, func(r *config.Resource) *string { return &r.Peer.Export }),

		strB(net, TagNetProtocol, func(r *config.Resource) *string { return (*string)(&r.Net.Protocol) }),
		strB(net, TagNetSharedSecret, func(r *config.Resource) *string { return &r.Net.SharedSecret }),
		omitWhenZero(strB(net, TagNetTLSCA, func(r *config.Resource) *string { return &r.Net.TLSCA })),
		durB(net, TagNetConnectTimeout, func(r *config.Resource) *time.Duration { return &r.Net.ConnectTimeout }),
		durB(net, TagNetPingInterval, func(r *config.Resource) *time.Duration { return &r.Net.PingInterval }),
		durB(net, TagNetPingTimeout, func(r *config.Resource) *time.Duration { return &r.Net.PingTimeout }),
		durB(net, TagNetTimeout, func(r *config.Resource) *time.Duration { return &r.Net.Timeout }),
		u32B(net, TagNetMaxInFlight, func(r *config.Resource) *uint32 { return &r.Net.MaxInFlight }),
		u64B(net, TagNetMaxInFlightBytes, func(r *config.Resource) *uint64 { return &r.Net.MaxInFlightBytes }),
		strB(net, TagNetAfterSB, func(r *config.Resource) *string { return (*string)(&r.Net.AfterSB) }),
		strB(net, TagNetSizeMismatch, func(r *config.Resource) *string { return (*string)(&r.Net.SizeMismatch) }),
		u32B(net, TagNetMaxProtocolVersion, func(r *config.Resource) *uint32 { return &r.Net.MaxProtocolVersion }),
		omitWhenZero(strB(net, TagNetFencing, func(r *config.Resource) *string { return (*string)(&r.Net.Fencing) })),

		u32B(disk, TagDiskALExtents, func(r *config.Resource) *uint32 { return &r.Disk.ALExtents }),
		strB(disk, TagDiskOnIOError, func(r *config.Resource) *string { return (*string)(&r.Disk.OnIOError) }),
		omitWhenZero(strB(disk, TagDiskOnNoDataAccessible, func(r *config.Resource) *string { return (*string)(&r.Disk.OnNoDataAccessible) })),
		boolB(disk, TagDiskDirectIO, func(r *config.Resource) *bool { return &r.Disk.DirectIO }),

		u64B(rs, TagResyncRate, func(r *config.Resource) *uint64 { return &r.Resync.Rate }),
		strB(rs, TagResyncCsums, func(r *config.Resource) *string { return (*string)(&r.Resync.Csums) }),
		strB(rs, TagResyncVerifyAlg, func(r *config.Resource) *string { return (*string)(&r.Resync.VerifyAlg) }),
		u32B(rs, TagResyncWindow, func(r *config.Resource) *uint32 { return &r.Resync.Window }),
		latencyTargetB(rs),

		durB(hd, TagHandlersTimeout, func(r *config.Resource) *time.Duration { return &r.Handlers.Timeout }),
	}
}

// EncodeConfig returns the configuration sections of cfg with every field,
// as create, up, adjust and show carry them, with the mandatory bits reg
// declares. Fields whose tags reg does not know are left out, as a tool of
// reg's version would, and so are fields added after 1.0 at their zero
// value (see binding): the result is a whole configuration, which replaces
// one (create, up, adjust; change with set-defaults), not an overlay.
func EncodeConfig(reg *Registry, cfg config.Resource) List {
	all := configSections()
	var secs [len(all)]List
	index := func(sec uint16) int { return slices.Index(all[:], sec) }
	for _, b := range bindings() {
		e := b.get(&cfg)
		if b.omitEmpty && e.isZero() {
			continue
		}
		secs[index(b.section)] = append(secs[index(b.section)], e)
	}
	h := &secs[index(TagHandlers)]
	for _, w := range cfg.Handlers.Dispatcher {
		*h = append(*h, String(TagHandlersDispatcher, w))
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Handlers.Commands)) {
		*h = append(*h, HandlerEntry(name, cfg.Handlers.Commands[name]))
	}
	var out List
	for i, sec := range all {
		out = append(out, Nested(sec, secs[i]...))
	}
	out = reg.Known(out)
	reg.MarkMandatory(out)
	return out
}

// RedactedSecret stands in for net.shared-secret in what show tells a
// client without admin access: that a secret is set, not the secret. An
// unset secret stays empty.
const RedactedSecret = "<redacted>"

// Redact returns cfg with its secrets (net.shared-secret) replaced by
// RedactedSecret, for readers that may see the configuration but not the
// secrets.
func Redact(cfg config.Resource) config.Resource {
	if cfg.Net.SharedSecret != "" {
		cfg.Net.SharedSecret = RedactedSecret
	}
	return cfg
}

// HandlerEntry returns a handlers.handler list for one handler's command
// line; an empty argv removes the handler in an overlay change.
func HandlerEntry(name string, argv []string) Entry {
	l := List{String(TagHandlerName, name)}
	for _, w := range argv {
		l = append(l, String(TagHandlerArg, w))
	}
	return Nested(TagHandlersHandler, l...)
}

// Known returns l without the entries (at any depth) whose tags reg does not
// know or has retired.
func (r *Registry) Known(l List) List {
	out := l[:0:0]
	for _, e := range l {
		t := r.tag(e.Tag)
		if t == nil || t.Retired {
			continue
		}
		if e.Type == TypeList {
			e.list = r.Known(e.list)
		}
		out = append(out, e)
	}
	return out
}

// ConfigPatch is the configuration a request carries: the values of the
// fields it gives, and which fields and sections those are.
type ConfigPatch struct {
	// Values holds the given fields; the others are zero.
	Values config.Resource
	given  map[uint16]bool
	err    *Error // the first entry that cannot be decoded
}

// Err returns the first problem DecodeConfig found that the registry's
// check cannot: a handlers.handler list without handler.name
// (MISSING_VALUE at handler.name), or two handlers.handler lists with the
// same handler.name (MALFORMED at handler.name, wrapping ErrDuplicateTag).
// Such an entry is left out of Values; a request with it must be refused.
func (p ConfigPatch) Err() error {
	if p.err == nil {
		return nil
	}
	return p.err
}

// DecodeConfig reads the configuration sections of a request body. It
// expects a body the registry has checked; tags it does not know are left
// out.
func DecodeConfig(body List) ConfigPatch {
	p := ConfigPatch{given: map[uint16]bool{}}
	bs := bindings()
	all := configSections()
	for _, sec := range body {
		if !slices.Contains(all[:], sec.Tag) || sec.Type != TypeList {
			continue
		}
		p.given[sec.Tag] = true
		for _, e := range sec.list {
			switch e.Tag {
			case TagHandlersDispatcher:
				p.Values.Handlers.Dispatcher = append(p.Values.Handlers.Dispatcher, e.Text())
				p.given[e.Tag] = true
				continue
			case TagHandlersHandler:
				name, argv := decodeHandler(e.list)
				if name == "" {
					if p.err == nil {
						p.err = &Error{Code: CodeMissingValue, Path: "handler.name",
							Message: "a handlers.handler entry has no handler.name: which handler is meant?"}
					}
					continue
				}
				if _, dup := p.Values.Handlers.Commands[name]; dup {
					// Which of the two was meant cannot be told; taking
					// the last would run a command the sender may not
					// have meant, and say nothing.
					if p.err == nil {
						p.err = &Error{Code: CodeMalformed, Path: "handler.name", Value: name, err: ErrDuplicateTag,
							Message: fmt.Sprintf("handler %q is given twice in the handlers section: give each handler once", name)}
					}
					continue
				}
				if p.Values.Handlers.Commands == nil {
					p.Values.Handlers.Commands = map[string][]string{}
				}
				p.Values.Handlers.Commands[name] = argv
				p.given[e.Tag] = true
				continue
			}
			for _, b := range bs {
				if b.tag == e.Tag && b.section == sec.Tag {
					b.set(&p.Values, e)
					p.given[e.Tag] = true
				}
			}
		}
	}
	return p
}

func decodeHandler(l List) (string, []string) {
	var name string
	argv := []string{}
	for _, e := range l {
		switch e.Tag {
		case TagHandlerName:
			name = e.Text()
		case TagHandlerArg:
			argv = append(argv, e.Text())
		}
	}
	return name, argv
}

// Given reports whether the patch gives the tag (a field or a section).
func (p ConfigPatch) Given(tag uint16) bool { return p.given[tag] }

// Empty reports whether the patch gives no section at all.
func (p ConfigPatch) Empty() bool { return len(p.given) == 0 }

// Apply returns base changed by the patch. Sections the patch does not give
// stay as they are. In a given section, fields the patch gives take its
// values; the others keep base's value, or with setDefaults return to their
// zero value, which config's Default then fills. resource.name is never
// reset. In the handlers section a handler with an empty command line is
// removed.
func (p ConfigPatch) Apply(base config.Resource, setDefaults bool) config.Resource {
	out := base
	out.Handlers.Dispatcher = slices.Clone(base.Handlers.Dispatcher)
	out.Handlers.Commands = maps.Clone(base.Handlers.Commands)
	if setDefaults {
		for _, sec := range configSections() {
			if !p.given[sec] {
				continue
			}
			switch sec {
			case TagResource:
				out.Local = config.Node{}
			case TagPeer:
				out.Peer = config.Node{}
			case TagNet:
				out.Net = config.Net{}
			case TagDisk:
				out.Disk = config.DiskOptions{}
			case TagResync:
				out.Resync = config.ResyncOptions{}
			case TagHandlers:
				out.Handlers = config.Handlers{}
			}
		}
	}
	for _, b := range bindings() {
		if p.given[b.tag] {
			b.set(&out, b.get(&p.Values))
		}
	}
	if p.given[TagHandlersDispatcher] {
		out.Handlers.Dispatcher = slices.Clone(p.Values.Handlers.Dispatcher)
	}
	for name, argv := range p.Values.Handlers.Commands {
		if len(argv) == 0 {
			delete(out.Handlers.Commands, name)
			continue
		}
		if out.Handlers.Commands == nil {
			out.Handlers.Commands = map[string][]string{}
		}
		out.Handlers.Commands[name] = slices.Clone(argv)
	}
	if len(out.Handlers.Commands) == 0 {
		out.Handlers.Commands = nil
	}
	return out
}

// ParseValue converts a command-line value to an entry of tag t: flags take
// true/false, durations (UnitMillis) take Go durations such as "5s" or plain
// milliseconds, sizes (UnitBytes) take a number with an optional K, M, G or
// T suffix (powers of 1024), strings are taken as they are. The entry has
// the mandatory bit the registry declares.
func ParseValue(t Tag, s string) (Entry, error) {
	bad := func(want string) error {
		return &Error{Code: CodeInvalidValue, Path: t.Name, Value: s, Allowed: want,
			Message: fmt.Sprintf("--%s %q: want %s", t.Flag, s, want)}
	}
	var e Entry
	switch t.Type {
	case TypeFlag:
		v, err := strconv.ParseBool(s)
		if err != nil {
			return Entry{}, bad("true or false")
		}
		e = Flag(t.Num, v)
	case TypeU8, TypeU16, TypeU32, TypeU64:
		bits := map[Type]int{TypeU8: 8, TypeU16: 16, TypeU32: 32, TypeU64: 64}[t.Type]
		var v uint64
		var err error
		switch t.Unit {
		case UnitMillis:
			if t.Num == TagResyncLatencyTarget && s == "off" {
				v = LatencyTargetOffMillis
				break
			}
			v, err = parseMillis(s)
			if err != nil {
				return Entry{}, bad("a duration such as 500ms or 5s")
			}
		case UnitBytes:
			v, err = parseSize(s)
			if err != nil {
				return Entry{}, bad("a size in bytes, with an optional K, M, G or T suffix")
			}
		default:
			v, err = strconv.ParseUint(s, 0, bits)
			if err != nil {
				return Entry{}, bad(fmt.Sprintf("an integer 0..%d", uint64(1)<<bits-1))
			}
		}
		if bits < 64 && v >= 1<<bits {
			return Entry{}, bad(fmt.Sprintf("at most %d", uint64(1)<<bits-1))
		}
		e = Entry{Tag: t.Num, Type: t.Type, num: v}
	case TypeS64:
		v, err := strconv.ParseInt(s, 0, 64)
		if err != nil {
			return Entry{}, bad("an integer")
		}
		e = S64(t.Num, v)
	case TypeString:
		e = String(t.Num, s)
	case TypeBytes:
		e = Bytes(t.Num, []byte(s))
	default:
		return Entry{}, bad("no value: it is a section")
	}
	if t.Mandatory {
		e = e.AsMandatory()
	}
	return e, nil
}

func parseMillis(s string) (uint64, error) {
	if v, err := strconv.ParseUint(s, 10, 64); err == nil {
		return v, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("bad duration %q", s)
	}
	return DurationToMillis(d), nil
}

func parseSize(s string) (uint64, error) {
	v, err := config.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return v, nil
}

// Sections groups configuration field entries (and handlers.handler lists)
// into their section lists, in wire order, using reg to find each tag's
// section. Entries of unknown tags are refused.
func (r *Registry) Sections(fields []Entry) (List, error) {
	all := configSections()
	var secs [len(all)]List
	for _, e := range fields {
		t := r.tag(e.Tag)
		if t == nil {
			return nil, fmt.Errorf("ctlproto: tag %d is not in the registry", e.Tag)
		}
		i := slices.Index(all[:], t.Section)
		if i < 0 {
			return nil, fmt.Errorf("ctlproto: %s is not a configuration field", t.Name)
		}
		secs[i] = append(secs[i], e)
	}
	var out List
	for i, sec := range all {
		if len(secs[i]) > 0 {
			out = append(out, Nested(sec, secs[i]...))
		}
	}
	r.MarkMandatory(out)
	return out, nil
}
