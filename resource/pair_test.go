package resource

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/hooks"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// relay is a TCP relay between the nodes that can stall and cut the
// link; held counts the bytes a stall holds.
type relay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	stallC chan struct{} // non-nil: forwarding is stalled until the next cut
	holdC  chan struct{} // non-nil: forwarding waits until release closes it
	refuse bool          // close new connections at once
	held   int           // bytes held by stalls
	wg     sync.WaitGroup
}

func startRelay(t *testing.T, target string) *relay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &relay{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			refuse := p.refuse
			p.mu.Unlock()
			if refuse {
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[u] = struct{}{}, struct{}{}
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(u, c)
			go p.pipe(c, u)
		}
	}()
	t.Cleanup(func() { ln.Close(); p.cut(); p.wg.Wait() })
	return p
}

func (p *relay) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *relay) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			stalled := p.stallC != nil
			if stalled {
				// Held until the cut that ends every stall, which drops
				// them: they are never forwarded, so keep reading.
				p.held += n
			}
			hold := p.holdC
			p.mu.Unlock()
			if hold != nil {
				<-hold // in order: this pipe reads nothing more meanwhile
			}
			if !stalled {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}

func (p *relay) heldBytes() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

func (p *relay) setRefuse(v bool) {
	p.mu.Lock()
	p.refuse = v
	p.mu.Unlock()
}

// stall holds every byte from now on (both directions) until cut.
func (p *relay) stall() {
	p.mu.Lock()
	p.stallC = make(chan struct{})
	p.mu.Unlock()
}

// hold delays every byte from now on (both directions), in order, until
// release: unlike stall, nothing is lost. A hold must end (release or cut)
// before the link's ping timeout.
func (p *relay) hold() {
	p.mu.Lock()
	p.holdC = make(chan struct{})
	p.mu.Unlock()
}

// release forwards what hold delayed and relays normally again.
func (p *relay) release() {
	p.mu.Lock()
	if p.holdC != nil {
		close(p.holdC)
		p.holdC = nil
	}
	p.mu.Unlock()
}

// cut resets every relayed connection, dropping held bytes, and relays new
// connections normally again.
func (p *relay) cut() {
	p.mu.Lock()
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
	}
	p.conns = map[net.Conn]struct{}{}
	if p.holdC != nil {
		close(p.holdC)
		p.holdC = nil
	}
	if p.stallC != nil {
		close(p.stallC)
		p.stallC = nil
	}
	p.mu.Unlock()
}

// hookDisk runs a test's hooks before writes and syncs of the data
// device, to hold or fail chosen ones.
type hookDisk struct {
	disk.Device
	mu        sync.Mutex
	writeHook func(p []byte, off int64) error // runs before the write
	syncHook  func() error
	readHook  func(p []byte, off int64) error // runs before the read
	afterRead func(p []byte, off int64)       // runs after a read that succeeded
}

func (d *hookDisk) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	h := d.readHook
	d.mu.Unlock()
	if h != nil {
		if err := h(p, off); err != nil {
			return 0, err
		}
	}
	n, err := d.Device.ReadAt(p, off)
	d.mu.Lock()
	a := d.afterRead
	d.mu.Unlock()
	if err == nil && a != nil {
		a(p, off)
	}
	return n, err
}

func (d *hookDisk) setAfterRead(h func(p []byte, off int64)) {
	d.mu.Lock()
	d.afterRead = h
	d.mu.Unlock()
}

func (d *hookDisk) setRead(h func(p []byte, off int64) error) {
	d.mu.Lock()
	d.readHook = h
	d.mu.Unlock()
}

func (d *hookDisk) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	h := d.writeHook
	d.mu.Unlock()
	if h != nil {
		if err := h(p, off); err != nil {
			return 0, err
		}
	}
	return d.Device.WriteAt(p, off)
}

func (d *hookDisk) Sync() error {
	d.mu.Lock()
	h := d.syncHook
	d.mu.Unlock()
	if h != nil {
		if err := h(); err != nil {
			return err
		}
	}
	return d.Device.Sync()
}

func (d *hookDisk) setWrite(h func(p []byte, off int64) error) {
	d.mu.Lock()
	d.writeHook = h
	d.mu.Unlock()
}

func (d *hookDisk) setSync(h func() error) {
	d.mu.Lock()
	d.syncHook = h
	d.mu.Unlock()
}

// pair is two Resources in this process, node a reaching node b through
// a relay, with hooks on both data devices.
type pair struct {
	t      *testing.T
	a, b   *Resource
	da, db *hookDisk
	proxy  *relay
	// oa and ob hear each node's state changes as they are published.
	oa, ob *funcObserver
}

// funcObserver calls the function set last at each published change
// (inside the node's loop: it may read Status only).
type funcObserver struct{ f atomic.Pointer[func()] }

func (o *funcObserver) set(f func()) { o.f.Store(&f) }

// Changed implements Observer.
func (o *funcObserver) Changed() {
	if f := o.f.Load(); f != nil {
		(*f)()
	}
}

// Hook implements Observer.
func (o *funcObserver) Hook(hooks.Event) {}

// freePort returns a port that is free on 127.0.0.1 now, picked at random
// below Linux's default ephemeral range (32768-60999), where outgoing
// connections take their source ports: a port the kernel picks for
// "port 0" is in that range, and a connection of another test process
// could take it before the node listens on it.
func freePort(t *testing.T) int {
	for range 100 {
		port := 10000 + rand.IntN(32768-10000)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no free port below 32768 in 100 tries")
	return 0
}

// pairDisk is one node's backing image and, for external meta-data, its
// meta-data file.
type pairDisk struct {
	img, meta string // meta "" = internal
}

// makePairDisk creates the image of size bytes and its meta-data, with
// alExtents activity-log slots (0: the default).
func makePairDisk(t *testing.T, n pairDisk, size int64, id uint32, alExtents uint32) {
	t.Helper()
	if fi, err := os.Stat(n.img); err != nil || fi.Mode()&os.ModeDevice == 0 {
		// A regular file, made of size bytes (a block device keeps
		// its own).
		f, err := os.Create(n.img)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	dev, err := disk.Open(n.img, disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	st, stSize, internal := metadata.Store(dev), dev.Size(), true
	opts := metadata.CreateOptions{NodeID: id, ALExtents: alExtents}
	if n.meta != "" {
		mf, err := os.Create(n.meta)
		if err != nil {
			t.Fatal(err)
		}
		if err := mf.Truncate(1 << 20); err != nil {
			t.Fatal(err)
		}
		mf.Close()
		md, err := disk.Open(n.meta, disk.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer md.Close()
		st, stSize, internal = md, md.Size(), false
		opts.DataSize = dev.Size()
	}
	if _, err := metadata.Create(st, stSize, internal, opts); err != nil {
		t.Fatal(err)
	}
}

// fastTimeout (net.timeout, under the net section startPairOn writes) makes
// a peer flush that a test holds fail in 2 s rather than 10.
const fastTimeout = "  timeout: 2s\n"

// startPairOn starts node a (id 0, dialing b through the relay) and node b
// (id 1) on the given disks; it does not wait for anything. extra is
// resource-file text after the net section (indented keys extend it);
// extraB, when set, replaces it for node b.
//
// The ports come from freePort, so another process may still take one
// before a node listens on it: a start that finds its port in use is tried
// again on other ports.
func startPairOn(t *testing.T, dir string, na, nb pairDisk, extra, extraB string) *pair {
	t.Helper()
	return startPairLinked(t, dir, na, nb, extra, extraB, true)
}

// startPairApart is startPairOn with the relay refusing connections from
// before the nodes start (c.proxy.setRefuse(false) lets them connect):
// for tests that need a node to do something before its first handshake.
func startPairApart(t *testing.T, dir string, na, nb pairDisk, extra, extraB string) *pair {
	t.Helper()
	return startPairLinked(t, dir, na, nb, extra, extraB, false)
}

func startPairLinked(t *testing.T, dir string, na, nb pairDisk, extra, extraB string, link bool) *pair {
	t.Helper()
	for attempt := 1; ; attempt++ {
		c, err := tryStartPairOn(t, dir, na, nb, extra, extraB, link)
		if err == nil {
			return c
		}
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == 5 {
			t.Fatal(err)
		}
		t.Logf("attempt %d: %v; trying other ports", attempt, err)
	}
}

func tryStartPairOn(t *testing.T, dir string, na, nb pairDisk, extra, extraB string, link bool) (*pair, error) {
	t.Helper()
	pa, pb := freePort(t), freePort(t)
	proxy := startRelay(t, fmt.Sprintf("127.0.0.1:%d", pb))
	proxy.setRefuse(!link)
	meta := func(n pairDisk) string {
		if n.meta == "" {
			return ""
		}
		return "\n    meta-disk: " + n.meta
	}
	if extraB == "" {
		extraB = extra
	}
	mk := func(name string, bAddrPort int, extra string) config.Resource {
		y := fmt.Sprintf(`resource: r0
nodes:
  - name: a
    node-id: 0
    address: 127.0.0.1:%d
    disk: %s%s
  - name: b
    node-id: 1
    address: 127.0.0.1:%d
    disk: %s%s
net:
  ping-interval: 1s
  ping-timeout: 5s
  connect-timeout: 5s
%s`, pa, na.img, meta(na), bAddrPort, nb.img, meta(nb), extra)
		f, err := config.ParseFile([]byte(y), dir)
		if err != nil {
			t.Fatal(err)
		}
		r, err := f.Node(name)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	log := zap.NewNop()
	if os.Getenv("RBD_NBD_TEST_LOG") != "" {
		log, _ = zap.NewDevelopment()
	}
	c := &pair{t: t, proxy: proxy, da: &hookDisk{}, db: &hookDisk{}, oa: &funcObserver{}, ob: &funcObserver{}}
	c.a = New(mk("a", proxy.port(), extra), Options{Logger: log.Named("A"), Observer: c.oa})
	c.b = New(mk("b", pb, extraB), Options{Logger: log.Named("B"), Observer: c.ob})
	c.a.wrapData = func(d disk.Device) disk.Device { c.da.Device = d; return c.da }
	c.b.wrapData = func(d disk.Device) disk.Device { c.db.Device = d; return c.db }
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.b.Start(ctx); err != nil {
		return nil, err
	}
	if err := c.a.Start(ctx); err != nil {
		if serr := c.b.Stop(ctx); serr != nil {
			t.Logf("stop: %v", serr)
		}
		return nil, err
	}
	return c, nil
}

// stopBoth takes both nodes down, releasing what the hooks hold.
func (c *pair) stopBoth() {
	c.da.setWrite(nil)
	c.da.setSync(nil)
	c.da.setRead(nil)
	c.db.setRead(nil)
	c.da.setAfterRead(nil)
	c.db.setAfterRead(nil)
	c.db.setWrite(nil)
	c.db.setSync(nil)
	for _, r := range []*Resource{c.a, c.b} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := r.Stop(ctx); err != nil {
			c.t.Logf("stop: %v", err)
		}
		cancel()
	}
}

// newPair starts node a (id 0, dialing b through the relay) and node b on
// blank 16 MiB disks, connects them, skips the initial sync and makes a
// Primary. extraB, when set, replaces extra (resource-file text) for node b.
func newPair(t *testing.T, extra, extraB string) *pair {
	c := startPairSized(t, 16<<20, 16<<20, 0, extra, extraB)
	c.primaryA()
	return c
}

// startPairSized starts nodes a and b (as startPairOn, stopped at the
// test's end) on blank disks of sizeA and sizeB bytes with internal
// meta-data of alExtents activity-log slots (0: the default); it waits
// for nothing.
func startPairSized(t *testing.T, sizeA, sizeB int64, alExtents uint32, extra, extraB string) *pair {
	t.Helper()
	dir := t.TempDir()
	na := pairDisk{img: filepath.Join(dir, "a.img")}
	nb := pairDisk{img: filepath.Join(dir, "b.img")}
	makePairDisk(t, na, sizeA, 0, alExtents)
	makePairDisk(t, nb, sizeB, 1, alExtents)
	c := startPairOn(t, dir, na, nb, extra, extraB)
	t.Cleanup(c.stopBoth)
	return c
}

// freshPairDisks makes blank 16 MiB disks for nodes a and b (internal
// meta-data, node ids 0 and 1) in a new temporary folder, for tests that
// stop a pair and start it again on the same disks (startPairOn).
func freshPairDisks(t *testing.T) (dir string, na, nb pairDisk) {
	t.Helper()
	return pairDisksSized(t, 16<<20, 16<<20)
}

// pairDisksSized is freshPairDisks with disks of sizeA and sizeB bytes.
func pairDisksSized(t *testing.T, sizeA, sizeB int64) (dir string, na, nb pairDisk) {
	t.Helper()
	dir = t.TempDir()
	na = pairDisk{img: filepath.Join(dir, "a.img")}
	nb = pairDisk{img: filepath.Join(dir, "b.img")}
	makePairDisk(t, na, sizeA, 0, 0)
	makePairDisk(t, nb, sizeB, 1, 0)
	return dir, na, nb
}

// primaryA skips the initial sync of the pair's blank disks, makes node a
// Primary and waits until the pair is idle and in sync.
func (c *pair) primaryA() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	if err := c.a.NewCurrentUUID(ctx, true); err != nil {
		c.t.Fatal(err)
	}
	c.waitBoth("uptodate", func(s Status) bool { return s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate })
	if err := c.a.Primary(ctx, false); err != nil {
		c.t.Fatal(err)
	}
	c.wait(c.a, "primary", func(s Status) bool { return s.Role == RolePrimary })
	c.settled()
}

// wait polls r's status until cond holds, failing the test after 30 s.
func (c *pair) wait(r *Resource, what string, cond func(Status) bool) Status {
	c.t.Helper()
	s, ok := waitStatus(r, 30*time.Second, cond)
	if !ok {
		c.t.Fatalf("timeout waiting for %s: %+v", what, s)
	}
	return s
}

// waitStatus polls r's status until cond holds or timeout passes.
func waitStatus(r *Resource, timeout time.Duration, cond func(Status) bool) (Status, bool) {
	deadline := time.Now().Add(timeout)
	for {
		s := r.Status()
		if cond(s) {
			return s, true
		}
		if time.Now().After(deadline) {
			return s, false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (c *pair) waitBoth(what string, cond func(Status) bool) {
	c.t.Helper()
	c.wait(c.a, what+" (a)", cond)
	c.wait(c.b, what+" (b)", cond)
}

// peerData reads b's disk directly.
func (c *pair) peerData(off, n int64) []byte {
	p := make([]byte, n)
	if _, err := c.db.Device.ReadAt(p, off); err != nil && err != io.EOF {
		c.t.Fatal(err)
	}
	return p
}

func (c *pair) localData(off, n int64) []byte {
	p := make([]byte, n)
	if _, err := c.da.Device.ReadAt(p, off); err != nil && err != io.EOF {
		c.t.Fatal(err)
	}
	return p
}

func fill(b byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = b
	}
	return p
}

// compareBlocks fails unless both nodes hold the same 4 KiB at each offset.
func (c *pair) compareBlocks(offs ...int64) {
	c.t.Helper()
	for _, off := range offs {
		if a, b := c.localData(off, 4096), c.peerData(off, 4096); !bytes.Equal(a, b) {
			c.t.Fatalf("replicas differ at %d after the crash recovery: a %x.., b %x..", off, a[:4], b[:4])
		}
	}
}

// settled waits until the pair is idle and in sync: connected, both
// UpToDate, nothing out of sync.
func (c *pair) settled() {
	c.t.Helper()
	c.wait(c.a, "a in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	c.wait(c.b, "b in sync", func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate })
}

// The retry in startPairOn relies on a start on a port in use failing
// with an error that unwraps to EADDRINUSE.
func TestStartOnPortInUseIsEADDRINUSE(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := t.TempDir()
	n := pairDisk{img: filepath.Join(dir, "b.img")}
	makePairDisk(t, n, 16<<20, 1, 0)
	// Node b (the higher id) listens; a dials.
	cfg := nodeB(t, dir, ln.Addr().String(), n.img, "")
	r := New(cfg, Options{Logger: zap.NewNop()})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = r.Start(ctx)
	if err == nil {
		r.Stop(ctx)
		t.Fatal("started on an address in use")
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("start on an address in use: %v, not EADDRINUSE", err)
	}
}

// disk.al-extents above the meta-data's slots (fixed by create-md) uses
// them all: up says so, naming both values.
func TestALExtentsMismatchWarns(t *testing.T) {
	dir := t.TempDir()
	n := pairDisk{img: filepath.Join(dir, "b.img")}
	makePairDisk(t, n, 16<<20, 1, 0)
	cfg := nodeB(t, dir, fmt.Sprintf("127.0.0.1:%d", freePort(t)), n.img, "disk: {al-extents: 3001}\n")
	core, logs := observer.New(zap.WarnLevel)
	r := New(cfg, Options{Logger: zap.New(core)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer r.Stop(ctx)
	found := logs.FilterMessageSnippet("disk.al-extents").All()
	if len(found) != 1 {
		t.Fatalf("%d warnings about disk.al-extents, want 1: %v", len(found), logs.All())
	}
	if m := found[0].ContextMap(); m["al-extents"] != uint32(3001) || m["slots"] != int64(config.DefaultALExtents) {
		t.Fatalf("warning fields %v", m)
	}
	if got := r.alog().Stats().Limit; got != config.DefaultALExtents {
		t.Fatalf("limit %d, want every slot (%d)", got, config.DefaultALExtents)
	}
}

// nodeB is node b's configuration of a resource r0 whose node a nobody
// runs: b listens on addr with disk img; extra is more resource-file text.
func nodeB(t *testing.T, dir, addr, img, extra string) config.Resource {
	t.Helper()
	y := fmt.Sprintf("resource: r0\nnodes:\n  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img}\n  - {name: b, node-id: 1, address: %q, disk: %s}\n%s", addr, img, extra)
	f, err := config.ParseFile([]byte(y), dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := f.Node("b")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
