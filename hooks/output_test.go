package hooks

import (
	"bytes"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

type logged struct {
	stream, line string
	cut          bool
}

func outputLines(logs *observer.ObservedLogs) (lines []logged, dropped int) {
	for _, e := range logs.All() {
		m := e.ContextMap()
		switch e.Message {
		case "handler output":
			cut, _ := m["truncated"].(bool)
			lines = append(lines, logged{m["stream"].(string), m["line"].(string), cut})
		case "handler output over the limit, not logged":
			dropped = int(m["lines"].(int64))
		}
	}
	return lines, dropped
}

func TestOutputLines(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	o := newOutput(zap.New(core), 8, 1000)
	out, errs := o.stream("stdout"), o.stream("stderr")
	// Lines arrive in arbitrary chunks.
	for _, chunk := range []string{"he", "llo\nwor", "ld\r\n", "\n", "0123456789abc\nx"} {
		if n, err := out.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	errs.Write([]byte("oops\n"))
	errs.Write([]byte("no newline"))
	o.flush()
	got, dropped := outputLines(logs)
	want := []logged{
		{"stdout", "hello", false},
		{"stdout", "world", false},
		{"stdout", "", false},
		{"stdout", "01234567", true},
		{"stderr", "oops", false},
		{"stdout", "x", false},
		{"stderr", "no newli", true},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d lines %+v, want %+v", len(got), got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if dropped != 0 {
		t.Errorf("dropped %d", dropped)
	}
}

func TestOutputBudget(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	o := newOutput(zap.New(core), 100, 10)
	s := o.stream("stdout")
	s.Write([]byte("abcd\n"))    // 5 of 10
	s.Write([]byte("efghijk\n")) // 8 > 5 left: dropped, and so is all after
	s.Write([]byte("a\n"))
	o.flush()
	got, dropped := outputLines(logs)
	if len(got) != 1 || got[0].line != "abcd" || dropped != 2 {
		t.Errorf("got %+v, dropped %d; want only abcd, 2 dropped", got, dropped)
	}
}

// FuzzOutput checks the output limits for any input: no line logged is
// longer than the line limit, the total never exceeds the budget, and
// what is logged is a prefix of the input's lines.
func FuzzOutput(f *testing.F) {
	f.Add([]byte("hello\nworld\n"), 4, 64, 3)
	f.Add([]byte("\n\n\n\r\n"), 1, 2, 1)
	f.Add(bytes.Repeat([]byte("x"), 1000), 10, 100, 7)
	f.Add([]byte("a\x00b\xff\n\xc3"), 2, 1, 2)
	f.Fuzz(func(t *testing.T, data []byte, maxLine, budget, chunk int) {
		if maxLine < 1 || maxLine > 1<<12 || budget < 0 || budget > 1<<16 || chunk < 1 {
			t.Skip()
		}
		core, logs := observer.New(zapcore.DebugLevel)
		o := newOutput(zap.New(core), maxLine, budget)
		s := o.stream("stdout")
		for p := data; len(p) > 0; {
			n := min(chunk, len(p))
			if w, err := s.Write(p[:n]); w != n || err != nil {
				t.Fatalf("Write = %d, %v", w, err)
			}
			p = p[n:]
		}
		o.flush()
		got, _ := outputLines(logs)
		lines := strings.Split(string(data), "\n")
		if len(data) > 0 && data[len(data)-1] == '\n' {
			lines = lines[:len(lines)-1]
		}
		total := 0
		for i, l := range got {
			if len(l.line) > maxLine {
				t.Fatalf("line %d has %d bytes > %d", i, len(l.line), maxLine)
			}
			total += len(l.line) + 1
			in := lines[i]
			if len(in) > maxLine {
				in = in[:maxLine]
			}
			if l.line != strings.TrimSuffix(in, "\r") {
				t.Fatalf("line %d = %q, input %q", i, l.line, lines[i])
			}
		}
		if total > budget {
			t.Fatalf("logged %d bytes > budget %d", total, budget)
		}
	})
}
