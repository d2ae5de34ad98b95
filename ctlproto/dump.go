package ctlproto

import (
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// Dump prints the frames in data as readable trees, naming tags through the
// registry (unknown tags by number). It decodes frame after frame until data
// ends, and stops at the first frame it cannot decode, after printing what
// it could and the reason.
func (r *Registry) Dump(w io.Writer, data []byte, lim Limits) error {
	for n := 0; len(data) > 0; n++ {
		h, err := ParseHeader(data, lim)
		if err != nil {
			fmt.Fprintf(w, "frame %d: %v\n", n, err)
			return err
		}
		fmt.Fprintf(w, "frame %d: %s (%d), protocol %d.%d, flags %s, seq %d, %d bytes\n",
			n, r.MsgName(h.Type), h.Type, h.Major, h.Minor, flagNames(h.Flags), h.Seq, h.Length)
		if int(h.Length) > len(data)-HeaderLen {
			err := wrapErr(CodeMalformed, ErrTruncated, "frame body cut short: %d of %d bytes", len(data)-HeaderLen, h.Length)
			fmt.Fprintf(w, "  %v\n", err)
			return err
		}
		body := data[HeaderLen : HeaderLen+int(h.Length)]
		data = data[HeaderLen+int(h.Length):]
		l, err := DecodeList(body, lim)
		if err != nil {
			fmt.Fprintf(w, "  %v\n", err)
			return err
		}
		r.dumpList(w, l, nil, 1)
	}
	return nil
}

func flagNames(f HeaderFlags) string {
	var s []string
	if f&FlagReply != 0 {
		s = append(s, "reply")
	}
	if f&FlagError != 0 {
		s = append(s, "error")
	}
	if rest := f &^ knownHeaderFlags; rest != 0 {
		s = append(s, fmt.Sprintf("%#04x", uint16(rest)))
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "|")
}

func (r *Registry) dumpList(w io.Writer, l List, parent *Tag, depth int) {
	ind := strings.Repeat("  ", depth)
	for _, e := range l {
		t := r.tag(e.Tag)
		name := fmt.Sprintf("tag %d (unknown)", e.Tag)
		if t != nil {
			name = fmt.Sprintf("%s (%d)", t.Name, e.Tag)
			if t.Retired {
				name += " retired"
			}
			if (parent == nil && t.Section != 0) || (parent != nil && t.Section != parent.Num) {
				name += " (out of place)"
			}
		}
		m := ""
		if e.Mandatory() {
			m = " mandatory"
		}
		fmt.Fprintf(w, "%s%s %s%s", ind, name, e.Type, m)
		if t != nil && t.Type != e.Type {
			fmt.Fprintf(w, " (wrong type: want %s)", t.Type)
		}
		if e.Type == TypeList {
			fmt.Fprintf(w, " [%d]\n", len(e.list))
			var sub *Tag
			if t != nil && t.Type == TypeList {
				sub = t
			}
			r.dumpList(w, e.list, sub, depth+1)
			continue
		}
		fmt.Fprintf(w, " %s\n", valueText(e, t))
	}
}

// valueText renders a scalar value, with the enum name or unit when the tag
// declares one.
func valueText(e Entry, t *Tag) string {
	switch e.Type {
	case TypeFlag:
		return strconv.FormatBool(e.Bool())
	case TypeU8, TypeU16, TypeU32, TypeU64:
		s := strconv.FormatUint(e.num, 10)
		if t == nil || t.Type != e.Type {
			return s
		}
		if int(e.num) < len(t.Enum) && e.num < 256 {
			return s + " (" + t.Enum[e.num] + ")"
		}
		switch t.Unit {
		case UnitMillis:
			return s + " (" + MillisToDuration(e.num).String() + ")"
		case UnitUnixNano:
			return s + " (" + time.Unix(0, int64(e.num)).UTC().Format(TimeFormat) + ")"
		case UnitNanos:
			return s + " (" + time.Duration(min(e.num, math.MaxInt64)).String() + ")"
		}
		return s
	case TypeS64:
		return strconv.FormatInt(e.Int(), 10)
	case TypeString:
		return strconv.Quote(e.Text())
	}
	return hex.EncodeToString(e.raw)
}

// ParseHex reads the hex form of captured frames: hex digits, with white
// space and "#" comments to the end of a line ignored.
func ParseHex(text []byte) ([]byte, error) {
	var digits strings.Builder
	for _, line := range strings.Split(string(text), "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		for _, f := range strings.Fields(line) {
			digits.WriteString(f)
		}
	}
	return hex.DecodeString(digits.String())
}
