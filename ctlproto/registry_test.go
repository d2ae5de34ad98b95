package ctlproto

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files (append-only changes are still enforced)")

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// goldenTable is a golden list: rows of tab-separated fields keyed by the
// number in the first field.
type goldenTable struct {
	file string
	rows map[int][]string
}

func readGolden(t *testing.T, file string) goldenTable {
	t.Helper()
	g := goldenTable{file: file, rows: map[int][]string{}}
	data, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, "\t")
		n, err := strconv.Atoi(f[0])
		if err != nil {
			t.Fatalf("%s: bad line %q", file, line)
		}
		g.rows[n] = f
	}
	return g
}

// checkGolden enforces the append-only rules: every golden row still exists
// with the same fields, except that allowed(col, old, new) may accept a
// difference; new rows only come after the last golden number.
func checkGolden(t *testing.T, file, header string, cur map[int][]string, allowed func(col int, old, new string) bool) {
	t.Helper()
	var g goldenTable
	if _, err := os.Stat(filepath.Join("testdata", file)); err == nil || !*update {
		g = readGolden(t, file)
	} else {
		g = goldenTable{rows: map[int][]string{}}
	}
	maxGolden := 0
	changed := false
	for n, old := range g.rows {
		maxGolden = max(maxGolden, n)
		now, ok := cur[n]
		if !ok {
			t.Errorf("%s: %s was removed: numbers are never reused, retire it instead", file, strings.Join(old, " "))
			continue
		}
		for i := range old {
			if i >= len(now) || old[i] == now[i] {
				continue
			}
			if allowed != nil && allowed(i, old[i], now[i]) {
				changed = true
				continue
			}
			t.Errorf("%s: number %d changed column %d from %q to %q: a released number never changes type or meaning", file, n, i, old[i], now[i])
		}
	}
	var nums []int
	for n := range cur {
		nums = append(nums, n)
		if _, ok := g.rows[n]; !ok {
			if n < maxGolden {
				t.Errorf("%s: new number %d is below the last released number %d: new entries are only appended", file, n, maxGolden)
			}
			changed = true
		}
	}
	if t.Failed() || !changed {
		return
	}
	if !*update {
		t.Errorf("%s: the registry has new or retired entries; record them with go test ./ctlproto -run TestRegistryGolden -update", file)
		return
	}
	slices.Sort(nums)
	var b strings.Builder
	b.WriteString(header)
	for _, n := range nums {
		b.WriteString(strings.Join(cur[n], "\t"))
		b.WriteByte('\n')
	}
	if err := os.WriteFile(filepath.Join("testdata", file), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRegistryGolden(t *testing.T) {
	reg := DefaultRegistry()
	tags := map[int][]string{}
	for _, tg := range reg.Tags() {
		sec := "-"
		if tg.Section != 0 {
			sec = reg.TagName(tg.Section)
		}
		tags[int(tg.Num)] = []string{strconv.Itoa(int(tg.Num)), tg.Name, tg.Type.String(), sec, tg.Unit.String(),
			yesNo(tg.Repeated), tg.Since, orDash(strings.Join(tg.Enum, ",")), yesNo(tg.Retired)}
	}
	checkGolden(t, "tags.golden", "# Tag registry (golden). Append-only: a number is never reused and never changes\n# name, type, section, unit or meaning; enums only grow; a tag may only become retired.\n# num\tname\ttype\tsection\tunit\trepeated\tsince\tenum\tretired\n", tags,
		func(col int, old, new string) bool {
			switch col {
			case 7: // enums may grow
				return strings.HasPrefix(new, old+",") || old == "-"
			case 8: // no -> yes only
				return old == "no" && new == "yes"
			}
			return false
		})

	msgs := map[int][]string{}
	for _, m := range reg.Msgs() {
		msgs[int(m.Type)] = []string{strconv.Itoa(int(m.Type)), m.Name, yesNo(m.Request), m.Access.String(), m.Since, yesNo(m.Retired)}
	}
	checkGolden(t, "msgtypes.golden", "# Message types (golden). Append-only.\n# type\tname\trequest\taccess\tsince\tretired\n", msgs,
		func(col int, old, new string) bool { return col == 5 && old == "no" && new == "yes" })

	codes := map[int][]string{}
	for _, c := range reg.Codes() {
		codes[int(c.Code)] = []string{strconv.Itoa(int(c.Code)), c.Name, c.Since}
	}
	checkGolden(t, "errors.golden", "# Error codes (golden). Append-only.\n# code\tname\tsince\n", codes, nil)
}

func TestRegistryConsistent(t *testing.T) {
	reg := DefaultRegistry()
	if n := len(reg.Codes()); n != len(codeNames) {
		t.Fatalf("%d code definitions, %d code names", n, len(codeNames))
	}
	for _, c := range reg.Codes() {
		if c.Doc == "" {
			t.Errorf("code %s has no doc", c.Name)
		}
	}
	for _, tg := range reg.Tags() {
		if tg.Doc == "" {
			t.Errorf("tag %s has no doc", tg.Name)
		}
		if tg.Section != 0 {
			sec := reg.TagName(tg.Section)
			// A nested list's tags may be named after its last part:
			// handler.name in handlers.handler.
			last := sec[strings.LastIndexByte(sec, '.')+1:]
			if !strings.HasPrefix(tg.Name, sec+".") && !strings.HasPrefix(tg.Name, last+".") {
				t.Errorf("tag %s lives in section %s but is not named after it", tg.Name, sec)
			}
		}
	}
	// Every status field has its tag, in order, with the declared type.
	for f := FieldName; f < numStatusFields; f++ {
		tg, ok := reg.Tag(f.Tag())
		if !ok || tg.Name != "status."+f.Key() || tg.Type != f.wireType() {
			t.Errorf("status field %s: tag %+v", f.Key(), tg)
		}
	}
	// Every configuration binding's tag lives in the binding's section.
	for _, b := range bindings() {
		tg, ok := reg.Tag(b.tag)
		if !ok || tg.Section != b.section {
			t.Errorf("binding for tag %d: registry has %+v", b.tag, tg)
		}
	}
}

func TestNewRegistryRefusesInconsistency(t *testing.T) {
	base := defaultTags()
	cases := map[string][]Tag{
		"duplicate number": append(slices.Clone(base), Tag{Num: TagResource, Name: "x", Type: TypeU8, Since: "1.0"}),
		"duplicate name":   append(slices.Clone(base), Tag{Num: 999, Name: "net.protocol", Type: TypeU8, Since: "1.0"}),
		"missing section":  append(slices.Clone(base), Tag{Num: 999, Name: "x", Type: TypeU8, Section: 998, Since: "1.0"}),
		"scalar section":   append(slices.Clone(base), Tag{Num: 999, Name: "x", Type: TypeU8, Section: TagResName, Since: "1.0"}),
		"bad type":         append(slices.Clone(base), Tag{Num: 999, Name: "x", Type: 0, Since: "1.0"}),
		"no since":         append(slices.Clone(base), Tag{Num: 999, Name: "x", Type: TypeU8}),
		"duplicate flag":   append(slices.Clone(base), Tag{Num: 999, Name: "x", Type: TypeU8, Flag: "protocol", Since: "1.0"}),
	}
	for name, tags := range cases {
		if _, err := NewRegistry(tags, defaultMsgs(), defaultCodes()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRegistryWithout(t *testing.T) {
	reg := DefaultRegistry()
	old := reg.Without(TagNet)
	for _, tg := range []uint16{TagNet, TagNetProtocol, TagNetTimeout} {
		if _, ok := old.Tag(tg); ok {
			t.Errorf("tag %d still there", tg)
		}
	}
	if _, ok := old.Tag(TagDisk); !ok {
		t.Errorf("unrelated tag removed")
	}
	m, _ := old.Msg(MsgChange)
	if slices.Contains(m.Accepts, TagNet) {
		t.Errorf("change still accepts net")
	}
	if _, ok := reg.Tag(TagNet); !ok {
		t.Errorf("Without changed the original")
	}
}

func TestCheckRequest(t *testing.T) {
	reg := DefaultRegistry()
	net := func(es ...Entry) Entry { return Nested(TagNet, es...).AsMandatory() }
	cases := []struct {
		name      string
		msg       MsgType
		body      List
		err       error
		path      string
		ignored   []uint16
		mandatory []uint16
	}{
		{name: "fine", msg: MsgChange, body: List{String(TagResName, "r0"), net(String(TagNetProtocol, "C"))}},
		{name: "unknown optional tag", msg: MsgChange, body: List{String(TagResName, "r0"), U32(900, 1)}, ignored: []uint16{900}},
		{name: "unknown mandatory tag", msg: MsgChange, body: List{U32(900, 1).AsMandatory()}, mandatory: []uint16{900}},
		{name: "unknown tag in a section", msg: MsgChange, body: List{net(U32(901, 1).AsMandatory(), U8(902, 1))}, ignored: []uint16{902}, mandatory: []uint16{901}},
		{name: "known tag not accepted by the message", msg: MsgStatus, body: List{net(String(TagNetProtocol, "C"))}, mandatory: []uint16{TagNet}},
		{name: "tag of another section", msg: MsgChange, body: List{net(U32(TagDiskALExtents, 7))}, ignored: []uint16{TagDiskALExtents}},
		{name: "wrong type", msg: MsgChange, body: List{net(U32(TagNetProtocol, 1))}, err: ErrWrongType, path: "net.protocol"},
		{name: "duplicate tag", msg: MsgChange, body: List{net(String(TagNetProtocol, "A"), String(TagNetProtocol, "B"))}, err: ErrDuplicateTag, path: "net.protocol"},
		{name: "duplicate section", msg: MsgChange, body: List{net(), net()}, err: ErrDuplicateTag, path: "net"},
		// A skipped entry carrying a parent's tag number must not clear the
		// parent's mark: the second net / res-name is still a duplicate.
		{name: "duplicate section after a skipped entry with its number", msg: MsgChange,
			body: List{String(TagResName, "r0"), net(String(TagNetProtocol, "A")), Nested(TagDisk, U32(TagNet, 0)), net(String(TagNetProtocol, "B"))},
			err:  ErrDuplicateTag, path: "net"},
		{name: "duplicate scalar after a skipped entry with its number", msg: MsgChange,
			body: List{String(TagResName, "r0"), net(U8(TagResName, 1)), String(TagResName, "r1")},
			err:  ErrDuplicateTag, path: "res-name"},
		{name: "repeated tag", msg: MsgChange, body: List{Nested(TagHandlers, String(TagHandlersDispatcher, "a"), String(TagHandlersDispatcher, "b"))}},
		{name: "unknown type of unknown tag", msg: MsgChange, body: List{{Tag: 903, Type: 77, raw: []byte{1}}}, ignored: []uint16{903}},
		{name: "event is not a request", msg: MsgEvent, err: ErrUnknownMessage},
		{name: "unknown message", msg: 999, err: ErrUnknownMessage},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := reg.CheckRequest(c.msg, c.body)
			if !errors.Is(err, c.err) {
				t.Fatalf("err = %v, want %v", err, c.err)
			}
			var pe *Error
			if c.path != "" && (!errors.As(err, &pe) || pe.Path != c.path) {
				t.Fatalf("err = %#v, want path %s", err, c.path)
			}
			if c.err != nil {
				return
			}
			if fmt.Sprint(res.Ignored) != fmt.Sprint(c.ignored) || fmt.Sprint(res.UnknownMandatory) != fmt.Sprint(c.mandatory) {
				t.Fatalf("result %+v, want ignored %v mandatory %v", res, c.ignored, c.mandatory)
			}
		})
	}
}

func TestRetiredTagIsUnknown(t *testing.T) {
	tags := defaultTags()
	for i := range tags {
		if tags[i].Num == TagNetMaxProtocolVersion {
			tags[i].Retired = true
		}
	}
	reg, err := NewRegistry(tags, defaultMsgs(), defaultCodes())
	if err != nil {
		t.Fatal(err)
	}
	res, err := reg.CheckRequest(MsgChange, List{Nested(TagNet, U32(TagNetMaxProtocolVersion, 1))})
	if err != nil || !slices.Equal(res.Ignored, []uint16{TagNetMaxProtocolVersion}) {
		t.Fatalf("retired tag: %+v %v", res, err)
	}
}

func TestCheckStripsSkippedEntries(t *testing.T) {
	reg := DefaultRegistry()
	body := List{String(TagResName, "r0"), U8(900, 1), Nested(TagNet, U8(901, 1), String(TagNetProtocol, "A"))}
	res, err := reg.CheckRequest(MsgChange, body)
	if err != nil {
		t.Fatal(err)
	}
	want := List{String(TagResName, "r0"), Nested(TagNet, String(TagNetProtocol, "A"))}
	if !slices.Equal(res.Body.Append(nil), want.Append(nil)) {
		t.Fatalf("body %+v, want %+v", res.Body, want)
	}
	if len(body) != 3 || len(body[2].List()) != 2 {
		t.Fatalf("the input was modified")
	}
}

// An unknown optional entry three levels deep (in a handlers.handler
// entry) is reported ignored and taken out of the body the handler acts
// on, as one at the top is.
func TestCheckRequestDropsDeepIgnored(t *testing.T) {
	reg := DefaultRegistry()
	body := List{
		String(TagResName, "r0").AsMandatory(),
		Nested(TagHandlers,
			Nested(TagHandlersHandler, String(TagHandlerName, "split-brain"), String(TagHandlerArg, "/bin/true"), U32(999, 7)).AsMandatory(),
		).AsMandatory(),
	}
	res, err := reg.CheckRequest(MsgChange, body)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Ignored) != 1 || res.Ignored[0] != 999 {
		t.Fatalf("ignored = %v, want [999]", res.Ignored)
	}
	hd, _ := res.Body.Find(TagHandlers)
	h, _ := hd.List().Find(TagHandlersHandler)
	if _, ok := h.List().Find(999); ok {
		t.Fatalf("tag 999 was reported ignored but is still in the body: %v", h.List())
	}
}
