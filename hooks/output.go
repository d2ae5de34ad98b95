package hooks

import (
	"bytes"
	"sync"

	"go.uber.org/zap"
)

// output logs a handler's stdout and stderr line by line, within a byte
// budget per run so that a chatty or runaway handler cannot flood the log.
// Each stream is written by its own os/exec copying goroutine; the budget
// is shared.
type output struct {
	log     *zap.Logger
	maxLine int

	mu        sync.Mutex
	budget    int // bytes that may still be logged
	dropLines int // lines not logged for lack of budget
	dropBytes int
	streams   []*stream
}

func newOutput(log *zap.Logger, maxLine, maxTotal int) *output {
	return &output{log: log, maxLine: maxLine, budget: maxTotal}
}

// stream returns the io.Writer for one stream, named in each logged line.
func (o *output) stream(name string) *stream {
	s := &stream{o: o, name: name}
	o.streams = append(o.streams, s)
	return s
}

// flush logs every stream's unterminated last line and a summary of what
// the budget dropped. It must be called after the writers are done.
func (o *output) flush() {
	for _, s := range o.streams {
		if len(s.buf) > 0 || s.cut {
			s.emit()
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.dropLines > 0 {
		o.log.Warn("handler output over the limit, not logged",
			zap.Int("lines", o.dropLines), zap.Int("bytes", o.dropBytes))
	}
}

// stream is one of a handler's output streams. Only one goroutine writes
// to it.
type stream struct {
	o    *output
	name string
	buf  []byte // the current line, at most maxLine bytes
	cut  bool   // the current line was longer than maxLine
	n    int    // the current line's full length
}

// Write splits p into lines; it never fails, so that the handler never
// blocks on or dies of its output.
func (s *stream) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		line, rest, eol := bytes.Cut(p, []byte{'\n'})
		s.n += len(line)
		if room := s.o.maxLine - len(s.buf); len(line) > room {
			line, s.cut = line[:room], true
		}
		s.buf = append(s.buf, line...)
		if !eol {
			break
		}
		s.emit()
		p = rest
	}
	return n, nil
}

// emit logs the current line, if the budget allows, and starts a new one.
func (s *stream) emit() {
	line := string(bytes.TrimSuffix(s.buf, []byte{'\r'}))
	cost, full := len(s.buf)+1, s.n+1
	cut := s.cut
	s.buf, s.cut, s.n = s.buf[:0], false, 0

	o := s.o
	o.mu.Lock()
	defer o.mu.Unlock()
	if cost > o.budget {
		// Once one line is dropped, all later ones are too: the log
		// never shows a line without the ones before it.
		o.budget = 0
		o.dropLines++
		o.dropBytes += full
		return
	}
	o.budget -= cost
	fields := []zap.Field{zap.String("stream", s.name), zap.String("line", line)}
	if cut {
		fields = append(fields, zap.Bool("truncated", true))
	}
	o.log.Info("handler output", fields...)
}
