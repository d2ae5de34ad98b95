package ctlproto

import (
	"fmt"
	"slices"
	"sort"
)

// Access is what a connected client may do.
type Access uint8

// The access levels, in increasing power.
const (
	// AccessNone may do nothing: every request is refused with
	// PERMISSION_DENIED.
	AccessNone Access = iota
	// AccessRead may read: hello, status, show, subscribe.
	AccessRead
	// AccessAdmin may also change things.
	AccessAdmin
)

func (a Access) String() string {
	switch a {
	case AccessNone:
		return "none"
	case AccessRead:
		return "read"
	case AccessAdmin:
		return "admin"
	}
	return fmt.Sprintf("access(%d)", uint8(a))
}

// Unit says how to read an integer tag's value.
type Unit uint8

// The units.
const (
	UnitNone     Unit = iota
	UnitMillis        // a duration in milliseconds
	UnitBytes         // a size in bytes
	UnitUnixNano      // a point in time: nanoseconds since 1970-01-01 UTC
	UnitNanos         // a duration in nanoseconds (added in 1.2)
)

var unitNames = [...]string{"-", "ms", "bytes", "unix-ns", "ns"}

func (u Unit) String() string {
	if int(u) < len(unitNames) {
		return unitNames[u]
	}
	return fmt.Sprintf("unit(%d)", uint8(u))
}

// Tag declares one tag. A tag's number, name, type, section, unit and
// meaning never change once released; a tag that is no longer used is
// Retired, never deleted, so that its number is never reused.
type Tag struct {
	// Num is the tag number, unique across the registry.
	Num uint16
	// Name is the tag's dotted path, e.g. "net.protocol". Error replies
	// name attributes by it.
	Name string
	// Type is the value type.
	Type Type
	// Section is the number of the list tag this tag lives in, or 0 for the
	// top level of a message body.
	Section uint16
	// Mandatory says whether senders set the mandatory bit: a receiver that
	// does not know the tag must then refuse the message.
	Mandatory bool
	// Repeated allows the tag more than once in one list.
	Repeated bool
	// Retired tags are no longer understood: receivers treat them as unknown.
	Retired bool
	// Since is the protocol version ("1.0") that added the tag.
	Since string
	// Unit says how to read an integer value.
	Unit Unit
	// Enum names the values of an enumerated integer, by value.
	Enum []string
	// Flag is the command-line option that sets the tag ("protocol" for
	// --protocol), or "".
	Flag string
	// Doc describes the tag.
	Doc string
}

// MsgDef declares one message type.
type MsgDef struct {
	// Type is the message type number.
	Type MsgType
	// Name is the message's name, e.g. "status".
	Name string
	// Request says whether clients may send it (false for events, which
	// only the daemon sends).
	Request bool
	// Access is the access level a client needs to send it.
	Access Access
	// Accepts lists the top-level tags the request may carry. Others are
	// unknown to it: skipped when optional, refused when mandatory.
	Accepts []uint16
	// Retired message types are refused as unknown.
	Retired bool
	// Since is the protocol version that added it.
	Since string
	// Doc describes the message.
	Doc string
}

// CodeDef declares one error code.
type CodeDef struct {
	// Code is the code number.
	Code Code
	// Name is its stable name, e.g. "UNKNOWN_RESOURCE".
	Name string
	// Since is the protocol version that added it.
	Since string
	// Doc describes when it is sent.
	Doc string
}

// Registry declares every tag, message type and error code. It is immutable
// once built, and it is a value, not a global: a test builds a registry
// without some tag to play an old daemon.
type Registry struct {
	tags   []*Tag // indexed by number; nil where none
	names  map[string]*Tag
	flags  map[string]*Tag
	msgs   []*msgEntry // indexed by type; nil where none
	byName map[string]*msgEntry
	codes  []CodeDef
}

type msgEntry struct {
	MsgDef
	accept []bool // indexed by tag number
}

// NewRegistry builds a registry and checks that it is consistent: unique
// numbers and names, sections that exist and are lists, accepted tags at
// the top level.
func NewRegistry(tags []Tag, msgs []MsgDef, codes []CodeDef) (*Registry, error) {
	r := &Registry{names: map[string]*Tag{}, flags: map[string]*Tag{}, byName: map[string]*msgEntry{}}
	maxTag := 0
	for _, t := range tags {
		maxTag = max(maxTag, int(t.Num))
	}
	r.tags = make([]*Tag, maxTag+1)
	for i := range tags {
		t := tags[i]
		switch {
		case t.Num == 0:
			return nil, fmt.Errorf("ctlproto: tag %q: number 0 is reserved", t.Name)
		case r.tags[t.Num] != nil:
			return nil, fmt.Errorf("ctlproto: tag %d declared twice (%q, %q)", t.Num, r.tags[t.Num].Name, t.Name)
		case t.Name == "":
			return nil, fmt.Errorf("ctlproto: tag %d has no name", t.Num)
		case r.names[t.Name] != nil:
			return nil, fmt.Errorf("ctlproto: tag name %q declared twice", t.Name)
		case t.Type < TypeFlag || t.Type > TypeList:
			return nil, fmt.Errorf("ctlproto: tag %d (%s): invalid type %d", t.Num, t.Name, t.Type)
		case t.Since == "":
			return nil, fmt.Errorf("ctlproto: tag %d (%s): no Since version", t.Num, t.Name)
		}
		if t.Flag != "" {
			if o := r.flags[t.Flag]; o != nil {
				return nil, fmt.Errorf("ctlproto: option --%s names tags %d and %d", t.Flag, o.Num, t.Num)
			}
			r.flags[t.Flag] = &t
		}
		r.tags[t.Num] = &t
		r.names[t.Name] = &t
	}
	for _, t := range r.tags {
		if t == nil || t.Section == 0 {
			continue
		}
		// Walk up: every ancestor must exist and be a list, with no cycle.
		seen := 0
		for s := t.Section; s != 0; s = r.tags[s].Section {
			if int(s) >= len(r.tags) || r.tags[s] == nil {
				return nil, fmt.Errorf("ctlproto: tag %d (%s): section %d does not exist", t.Num, t.Name, s)
			}
			if r.tags[s].Type != TypeList {
				return nil, fmt.Errorf("ctlproto: tag %d (%s): section %d is not a list", t.Num, t.Name, s)
			}
			if seen++; seen > len(r.tags) {
				return nil, fmt.Errorf("ctlproto: tag %d (%s): sections form a cycle", t.Num, t.Name)
			}
		}
	}
	maxMsg := 0
	for _, m := range msgs {
		maxMsg = max(maxMsg, int(m.Type))
	}
	r.msgs = make([]*msgEntry, maxMsg+1)
	for _, m := range msgs {
		switch {
		case m.Type == 0:
			return nil, fmt.Errorf("ctlproto: message %q: type 0 is reserved", m.Name)
		case r.msgs[m.Type] != nil:
			return nil, fmt.Errorf("ctlproto: message type %d declared twice", m.Type)
		case m.Name == "" || r.byName[m.Name] != nil:
			return nil, fmt.Errorf("ctlproto: message type %d: empty or duplicate name %q", m.Type, m.Name)
		case m.Since == "":
			return nil, fmt.Errorf("ctlproto: message %s: no Since version", m.Name)
		}
		e := &msgEntry{MsgDef: m, accept: make([]bool, len(r.tags))}
		for _, a := range m.Accepts {
			if int(a) >= len(r.tags) || r.tags[a] == nil || r.tags[a].Section != 0 {
				return nil, fmt.Errorf("ctlproto: message %s accepts tag %d, which is not a top-level tag", m.Name, a)
			}
			e.accept[a] = true
		}
		r.msgs[m.Type] = e
		r.byName[m.Name] = e
	}
	seenCodes := map[Code]bool{}
	for _, c := range codes {
		if seenCodes[c.Code] || c.Name == "" || c.Since == "" {
			return nil, fmt.Errorf("ctlproto: error code %d: duplicate, or no name or Since", c.Code)
		}
		seenCodes[c.Code] = true
	}
	r.codes = slices.Clone(codes)
	sort.Slice(r.codes, func(i, j int) bool { return r.codes[i].Code < r.codes[j].Code })
	return r, nil
}

// DefaultRegistry returns the registry of this protocol version. It builds
// a new value on every call; callers keep the one they use.
func DefaultRegistry() *Registry {
	r, err := NewRegistry(defaultTags(), defaultMsgs(), defaultCodes())
	if err != nil {
		panic(err) // the registry tests keep the tables consistent
	}
	return r
}

// Without returns a copy of r that lacks the given tags and everything in
// them, as a daemon built before those tags would. It is meant for tests.
func (r *Registry) Without(nums ...uint16) *Registry {
	return r.without(func(t *Tag) bool {
		for ; t != nil; t = r.tags[t.Section] {
			if slices.Contains(nums, t.Num) {
				return true
			}
			if t.Section == 0 {
				return false
			}
		}
		return false
	}, func(MsgType) bool { return false })
}

// WithoutMsgs returns a copy of r that lacks the given message types, as a
// daemon built before them would. It is meant for tests.
func (r *Registry) WithoutMsgs(types ...MsgType) *Registry {
	return r.without(func(*Tag) bool { return false }, func(t MsgType) bool { return slices.Contains(types, t) })
}

// without copies r without the tags and message types the functions
// drop; a message no longer accepts a dropped tag.
func (r *Registry) without(dropTag func(*Tag) bool, dropMsg func(MsgType) bool) *Registry {
	var tags []Tag
	for _, t := range r.tags {
		if t != nil && !dropTag(t) {
			tags = append(tags, *t)
		}
	}
	var msgs []MsgDef
	for _, m := range r.msgs {
		if m == nil || dropMsg(m.Type) {
			continue
		}
		d := m.MsgDef
		d.Accepts = slices.DeleteFunc(slices.Clone(d.Accepts), func(a uint16) bool { return dropTag(r.tag(a)) })
		msgs = append(msgs, d)
	}
	out, err := NewRegistry(tags, msgs, r.codes)
	if err != nil {
		panic(err) // dropping entries of a consistent registry keeps it consistent
	}
	return out
}

// Tag returns the declaration of tag num.
func (r *Registry) Tag(num uint16) (Tag, bool) {
	if t := r.tag(num); t != nil {
		return *t, true
	}
	return Tag{}, false
}

func (r *Registry) tag(num uint16) *Tag {
	if int(num) < len(r.tags) {
		return r.tags[num]
	}
	return nil
}

// TagByName returns the tag with the dotted name.
func (r *Registry) TagByName(name string) (Tag, bool) {
	if t := r.names[name]; t != nil {
		return *t, true
	}
	return Tag{}, false
}

// TagByFlag returns the tag the command-line option --flag sets.
func (r *Registry) TagByFlag(flag string) (Tag, bool) {
	if t := r.flags[flag]; t != nil {
		return *t, true
	}
	return Tag{}, false
}

// Tags returns every tag in number order.
func (r *Registry) Tags() []Tag {
	var out []Tag
	for _, t := range r.tags {
		if t != nil {
			out = append(out, *t)
		}
	}
	return out
}

// TagsIn returns the tags of a section (0: the top level) in number order.
func (r *Registry) TagsIn(section uint16) []Tag {
	var out []Tag
	for _, t := range r.tags {
		if t != nil && t.Section == section {
			out = append(out, *t)
		}
	}
	return out
}

// Msg returns the declaration of message type t.
func (r *Registry) Msg(t MsgType) (MsgDef, bool) {
	if m := r.msg(t); m != nil {
		return m.MsgDef, true
	}
	return MsgDef{}, false
}

// MsgByName returns the message type with the name.
func (r *Registry) MsgByName(name string) (MsgDef, bool) {
	if m := r.byName[name]; m != nil {
		return m.MsgDef, true
	}
	return MsgDef{}, false
}

func (r *Registry) msg(t MsgType) *msgEntry {
	if int(t) < len(r.msgs) {
		return r.msgs[t]
	}
	return nil
}

// Msgs returns every message type in number order.
func (r *Registry) Msgs() []MsgDef {
	var out []MsgDef
	for _, m := range r.msgs {
		if m != nil {
			out = append(out, m.MsgDef)
		}
	}
	return out
}

// Codes returns every error code in number order.
func (r *Registry) Codes() []CodeDef { return slices.Clone(r.codes) }

// MsgName returns the name of message type t, or "type N" when unknown.
func (r *Registry) MsgName(t MsgType) string {
	if m := r.msg(t); m != nil {
		return m.Name
	}
	return fmt.Sprintf("type %d", t)
}

// TagName returns the dotted name of tag num, or "tag N" when unknown.
func (r *Registry) TagName(num uint16) string {
	if t := r.tag(num); t != nil {
		return t.Name
	}
	return fmt.Sprintf("tag %d", num)
}

// CheckResult is the outcome of a check: the tags it did not understand,
// and the body without them.
type CheckResult struct {
	// Ignored are optional tags that were skipped: unknown, retired, or not
	// accepted where they appeared.
	Ignored []uint16
	// UnknownMandatory are mandatory tags of that kind: the message must be
	// refused.
	UnknownMandatory []uint16
	// Body is the checked body without the skipped entries, so that a
	// handler never acts on a tag it reported as ignored. It shares the
	// input's entries where nothing was skipped.
	Body List
}

// CheckRequest checks a request body of message type t against the
// registry: known tags must have their declared type and appear once unless
// repeatable; unknown tags are sorted into the result. It returns an *Error
// (MALFORMED) for a wrong type or a duplicate, and one wrapping
// ErrUnknownMessage for a message type that is not a known request.
func (r *Registry) CheckRequest(t MsgType, body List) (CheckResult, error) {
	m := r.msg(t)
	if m == nil || !m.Request || m.Retired {
		return CheckResult{}, wrapErr(CodeUnknownMessageType, ErrUnknownMessage, "message type %d is not a request this daemon knows", t)
	}
	c := checker{r: r, msg: m, seen: make([]bool, len(r.tags))}
	var err error
	c.res.Body, err = c.list(body, nil)
	return c.res, err
}

// CheckReply checks a reply or event body like CheckRequest, accepting any
// top-level tag the registry knows.
func (r *Registry) CheckReply(body List) (CheckResult, error) {
	c := checker{r: r, seen: make([]bool, len(r.tags))}
	var err error
	c.res.Body, err = c.list(body, nil)
	return c.res, err
}

type checker struct {
	r    *Registry
	msg  *msgEntry // nil: any top-level tag
	seen []bool    // indexed by tag number; set while checking one list
	// marked holds the tag numbers set in seen, innermost list last: a
	// list clears only the marks it set itself, never a parent's (an
	// unknown entry carrying the parent's tag number is skipped, not
	// marked).
	marked []uint16
	res    CheckResult
}

func (c *checker) known(e *Entry, parent *Tag) *Tag {
	t := c.r.tag(e.Tag)
	if t == nil || t.Retired {
		return nil
	}
	if parent == nil {
		if t.Section != 0 || (c.msg != nil && !c.msg.accept[t.Num]) {
			return nil
		}
	} else if t.Section != parent.Num {
		return nil
	}
	return t
}

// list checks l and returns it without the skipped entries.
func (c *checker) list(l List, parent *Tag) (List, error) {
	var out List // nil while l needs no change
	base := len(c.marked)
	diverge := func(i int) {
		if out == nil {
			out = make(List, i, len(l))
			copy(out, l[:i])
		}
	}
	for i := range l {
		e := l[i]
		t := c.known(&e, parent)
		if t == nil {
			if e.Mandatory() {
				c.res.UnknownMandatory = appendOnce(c.res.UnknownMandatory, e.Tag)
			} else {
				c.res.Ignored = appendOnce(c.res.Ignored, e.Tag)
			}
			diverge(i)
			continue
		}
		if e.Type != t.Type {
			return nil, &Error{Code: CodeMalformed, Path: t.Name, err: ErrWrongType,
				Message: fmt.Sprintf("%s (tag %d) has type %s, want %s", t.Name, t.Num, e.Type, t.Type)}
		}
		if !t.Repeated {
			if c.seen[t.Num] {
				return nil, &Error{Code: CodeMalformed, Path: t.Name, err: ErrDuplicateTag,
					Message: fmt.Sprintf("%s (tag %d) appears more than once", t.Name, t.Num)}
			}
			c.seen[t.Num] = true
			c.marked = append(c.marked, t.Num)
		}
		if t.Type == TypeList {
			sub, err := c.list(e.list, t)
			if err != nil {
				return nil, err
			}
			// list returns its argument itself when nothing in it, at any
			// depth, was dropped.
			if len(sub) != len(e.list) || (len(sub) > 0 && &sub[0] != &e.list[0]) {
				diverge(i)
				e.list = sub
			}
		}
		if out != nil {
			out = append(out, e)
		}
	}
	// Clear only the marks this list set: a skipped entry may carry the
	// number of a tag the parent list marked.
	for _, num := range c.marked[base:] {
		c.seen[num] = false
	}
	c.marked = c.marked[:base]
	if out == nil {
		return l, nil
	}
	return out, nil
}

func appendOnce(s []uint16, v uint16) []uint16 {
	if slices.Contains(s, v) {
		return s
	}
	return append(s, v)
}

// MarkMandatory sets the mandatory bit on every entry of l (recursively)
// whose tag the registry declares Mandatory, as senders do.
func (r *Registry) MarkMandatory(l List) {
	for i := range l {
		if t := r.tag(l[i].Tag); t != nil && t.Mandatory {
			l[i].Flags |= EntryMandatory
		}
		if l[i].Type == TypeList {
			r.MarkMandatory(l[i].list)
		}
	}
}
