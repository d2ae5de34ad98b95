package ctlproto

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/rbd-nbd/rbd-nbd/resource"
)

// EventKind says what happened. Values are wire format.
type EventKind uint8

// The event kinds.
const (
	// EventExists reports an object that existed when the subscription
	// started; ObjectNone marks the end of that dump.
	EventExists  EventKind = 1
	EventCreate  EventKind = 2
	EventChange  EventKind = 3
	EventDestroy EventKind = 4
	// EventCall reports a hook handler being started.
	EventCall EventKind = 5
	// EventResponse reports a hook handler's outcome.
	EventResponse EventKind = 6
)

var eventKindNames = [...]string{"unknown", "exists", "create", "change", "destroy", "call", "response"}

func (k EventKind) String() string {
	if int(k) < len(eventKindNames) {
		return eventKindNames[k]
	}
	return "kind" + strconv.Itoa(int(k))
}

// ObjectKind says what an event is about. Values are wire format.
type ObjectKind uint8

// The event objects.
const (
	// ObjectNone: the "exists -" marker that ends the initial dump.
	ObjectNone       ObjectKind = 0
	ObjectResource   ObjectKind = 1
	ObjectConnection ObjectKind = 2
	ObjectDisk       ObjectKind = 3
	ObjectPeer       ObjectKind = 4
	// ObjectHelper: a hook handler run (call, response).
	ObjectHelper ObjectKind = 5
)

var objectNames = [...]string{"-", "resource", "connection", "disk", "peer", "helper"}

func (o ObjectKind) String() string {
	if int(o) < len(objectNames) {
		return objectNames[o]
	}
	return "object" + strconv.Itoa(int(o))
}

// Event is one event of a subscription.
type Event struct {
	// Kind and Object say what happened to what.
	Kind   EventKind
	Object ObjectKind
	// Time is when it happened (zero: not sent).
	Time time.Time
	// Status holds the fields in Fields: the object's identity and, for
	// change events, only the fields that changed.
	Status resource.Status
	Fields FieldSet
	// Hook, HookID, HookExit and HookError describe a handler run (call,
	// response).
	Hook      string
	HookID    uint64
	HookExit  int64
	HookError string
}

// Marker reports whether e is the "exists -" marker that ends the dump of
// existing objects.
func (e Event) Marker() bool { return e.Kind == EventExists && e.Object == ObjectNone }

// Body returns the body of an event message.
func (e Event) Body() List {
	ev := List{U8(TagEventKind, uint8(e.Kind)), U8(TagEventObject, uint8(e.Object))}
	if !e.Time.IsZero() {
		ev = append(ev, U64(TagEventTime, uint64(e.Time.UnixNano())))
	}
	if e.Object == ObjectHelper {
		ev = append(ev, String(TagEventHook, e.Hook), U64(TagEventHookID, e.HookID))
		if e.Kind == EventResponse {
			ev = append(ev, S64(TagEventHookExit, e.HookExit))
			if e.HookError != "" {
				ev = append(ev, String(TagEventHookError, e.HookError))
			}
		}
	}
	body := List{Nested(TagEvent, ev...)}
	if e.Fields != 0 {
		body = append(body, Nested(TagStatus, statusFields(e.Status, e.Fields, e.Kind == EventChange)...))
	}
	return body
}

// DecodeEvent reads an event message body.
func DecodeEvent(body List) (Event, error) {
	sec, ok := body.Find(TagEvent)
	if !ok {
		return Event{}, wrapErr(CodeMalformed, ErrBadEntry, "event message without an event section")
	}
	var e Event
	for _, f := range sec.list {
		switch f.Tag {
		case TagEventKind:
			e.Kind = EventKind(f.Uint())
		case TagEventObject:
			e.Object = ObjectKind(f.Uint())
		case TagEventTime:
			e.Time = time.Unix(0, int64(f.Uint()))
		case TagEventHook:
			e.Hook = f.Text()
		case TagEventHookID:
			e.HookID = f.Uint()
		case TagEventHookExit:
			e.HookExit = f.Int()
		case TagEventHookError:
			e.HookError = f.Text()
		}
	}
	if st, ok := body.Find(TagStatus); ok {
		e.Status, e.Fields = DecodeStatus(st.list)
	}
	return e, nil
}

// ordered returns the fields of s as events print them: the identity
// fields name and peer-node-id first, then the others in tag order.
func (s FieldSet) ordered() []StatusField {
	out := make([]StatusField, 0, numStatusFields)
	for _, f := range [...]StatusField{FieldName, FieldPeerNodeID} {
		if s.Has(f) {
			out = append(out, f)
		}
	}
	for f := FieldName; f < numStatusFields; f++ {
		if s.Has(f) && f != FieldName && f != FieldPeerNodeID {
			out = append(out, f)
		}
	}
	return out
}

// TimeFormat is how event lines print timestamps.
const TimeFormat = "2006-01-02T15:04:05.000000Z07:00"

// Text returns the event as one line, e.g.
// "change resource name:r0 role:Primary"; with timestamps the time comes
// first.
func (e Event) Text(timestamps bool) string {
	var b strings.Builder
	if timestamps && !e.Time.IsZero() {
		b.WriteString(e.Time.Format(TimeFormat))
		b.WriteByte(' ')
	}
	b.WriteString(e.Kind.String())
	b.WriteByte(' ')
	b.WriteString(e.Object.String())
	for _, f := range e.Fields.ordered() {
		b.WriteByte(' ')
		b.WriteString(f.Key())
		b.WriteByte(':')
		if f == FieldLinkError || f == FieldDiskError {
			// Free text, which may hold spaces: a Go-quoted string
			// (a reader takes from the opening quote to the closing
			// one, escapes included).
			b.WriteString(strconv.Quote(FieldText(e.Status, f)))
			continue
		}
		b.WriteString(FieldText(e.Status, f))
	}
	if e.Object == ObjectHelper {
		b.WriteString(" helper:")
		b.WriteString(e.Hook)
		b.WriteString(" id:")
		b.WriteString(strconv.FormatUint(e.HookID, 10))
		if e.Kind == EventResponse {
			b.WriteString(" status:")
			b.WriteString(strconv.FormatInt(e.HookExit, 10))
			if e.HookError != "" {
				b.WriteString(" error:")
				b.WriteString(strconv.Quote(e.HookError))
			}
		}
	}
	return b.String()
}

// MarshalJSON renders the event as one JSON object with the keys of the
// text form, in the same order: time (when set), kind, object, the status
// fields, then the helper's.
func (e Event) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	sep := byte('{')
	put := func(k string, v any) {
		b.WriteByte(sep)
		sep = ','
		kb, _ := json.Marshal(k)
		vb, _ := json.Marshal(v)
		b.Write(kb)
		b.WriteByte(':')
		b.Write(vb)
	}
	if !e.Time.IsZero() {
		put("time", e.Time.Format(TimeFormat))
	}
	put("kind", e.Kind.String())
	put("object", e.Object.String())
	for _, f := range e.Fields.ordered() {
		put(f.Key(), FieldJSON(e.Status, f))
	}
	if e.Object == ObjectHelper {
		put("helper", e.Hook)
		put("id", e.HookID)
		if e.Kind == EventResponse {
			put("status", e.HookExit)
			if e.HookError != "" {
				put("error", e.HookError)
			}
		}
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// FieldJSON returns field f of st as JSON output gives it: a string for
// names, enumerations and the UUID, a number otherwise.
func FieldJSON(st resource.Status, f StatusField) any {
	switch f {
	case FieldName, FieldRole, FieldDisk, FieldConn, FieldPeerRole, FieldPeerDisk, FieldCurrentUUID, FieldSuspended, FieldVerify:
		return FieldText(st, f)
	case FieldResyncETA:
		return st.ResyncETA
	case FieldDown:
		return st.Down
	case FieldSyncPaused:
		return st.SyncPaused
	case FieldLinkError:
		return st.LinkError
	case FieldDiskError:
		return st.DiskError
	}
	return statusValue(&st, f)
}
