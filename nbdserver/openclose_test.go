package nbdserver

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Export.Open decides each connection about to enter the transmission
// phase, NBD_OPT_GO and NBD_OPT_EXPORT_NAME alike, and is not asked for
// NBD_OPT_INFO; its refusal reaches a GO client as the reply, with its
// text. Close follows each admitted connection's end exactly once, and
// never a refused one.
func TestExportOpenClose(t *testing.T) {
	exp, _ := memExport("d", 1<<20)
	var opens atomic.Int32
	closed := make(chan struct{}, 8)
	var refuse atomic.Bool
	exp.Open = func() error {
		if refuse.Load() {
			return fmt.Errorf("auto-promote: the peer is Primary: %w", ErrExportRefused)
		}
		opens.Add(1)
		return nil
	}
	exp.Close = func() { closed <- struct{}{} }
	_, addr := startServer(t, Config{}, exp)
	// waitClose waits for the Close of the connection just ended; one
	// more would fail the test at the next wait or at the end.
	waitClose := func() {
		t.Helper()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal("no Close after the connection ended")
		}
	}

	// INFO opens nothing.
	c := dial(t, addr)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c.optGo(optInfo, "d")
	c.nc.Close()
	if opens.Load() != 0 {
		t.Fatalf("NBD_OPT_INFO opened the export")
	}

	// GO, then I/O, then the end of the connection.
	c = open(t, addr, "d")
	if opens.Load() != 1 {
		t.Fatalf("%d opens after GO, want 1", opens.Load())
	}
	if errno := c.writeAt([]byte("abcd"), 0, 0); errno != 0 {
		t.Fatalf("write: errno %d", errno)
	}
	c.nc.Close()
	waitClose()

	// EXPORT_NAME opens too.
	c = dial(t, addr)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c.sendOpt(optExportName, []byte("d"))
	c.readFull(10)
	if opens.Load() != 2 {
		t.Fatalf("%d opens after EXPORT_NAME, want 2", opens.Load())
	}
	c.nc.Close()
	waitClose()

	// A refusal: GO gets it as the reply, with its text; no Close.
	refuse.Store(true)
	c = dial(t, addr)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c.sendOpt(optGo, goData("d"))
	var r optReply
	for r = c.readOptReply(); r.typ == repInfo; r = c.readOptReply() {
	}
	if r.typ != repErrPolicy || !strings.Contains(string(r.data), "the peer is Primary") {
		t.Fatalf("refused GO: reply %#x %q", r.typ, r.data)
	}
	// The client may try again: the connection is still negotiating.
	refuse.Store(false)
	c.optGo(optGo, "d")
	c.nc.Close()
	waitClose()
	if o := opens.Load(); o != 3 {
		t.Fatalf("%d opens, want 3", o)
	}
	if len(closed) != 0 {
		t.Fatalf("%d Closes more than connections admitted", len(closed))
	}
}

// Server.Close (and Shutdown) return once the connections' goroutines
// have ended, Export.Close included: a caller that tears down what Close
// uses (the resource's loop) after them finds no Close still running.
// Close ran after the connection left the server's wait group.
func TestServerCloseWaitsForExportClose(t *testing.T) {
	exp, _ := memExport("d", 1<<20)
	entered, release := make(chan struct{}), make(chan struct{})
	var finished atomic.Bool
	exp.Open = func() error { return nil }
	exp.Close = func() {
		close(entered)
		<-release
		finished.Store(true)
	}
	s, addr := startServer(t, Config{}, exp)
	c := open(t, addr, "d")
	c.nc.Close()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no Close after the connection ended")
	}
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Error("Server.Close returned while Export.Close still ran")
	case <-time.After(100 * time.Millisecond):
		// Still waiting, as it should: let Close finish.
	}
	close(release)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Server.Close did not return after Export.Close did")
	}
	if !finished.Load() {
		t.Fatal("Server.Close returned before Export.Close did")
	}
}
