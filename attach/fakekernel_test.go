package attach

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// fakeKernel stands in for the nbd driver: its generic-netlink family
// (reached through netlink.Conn over a fake socket, so the real encoding,
// framing, acknowledgement and error paths run) and the sysfs files the
// driver keeps under /sys/block/nbdN, in a temporary directory. It records
// every nbd command, decoded as the driver would, for tests to assert.
type fakeKernel struct {
	t         *testing.T
	sys, proc string
	familyID  uint16
	groupID   uint32
	devices   int

	mu     sync.Mutex
	loaded bool // the family is registered (the module is loaded)
	cmds   []fakeCmd
	socks  []*fakeSocket
	// silentConnect configures the device on NBD_CMD_CONNECT but never
	// replies, as a kernel whose reply is lost.
	silentConnect bool
	// silence lists the commands the fake records but neither carries
	// out nor answers, as a driver stuck on them.
	silence map[uint8]bool
	// refuse answers a command with this errno instead of carrying it out.
	refuse map[uint8]syscall.Errno
	// task is the thread id the fake driver shows in nbdN/pid for
	// devices attached through it; proc maps it to this process.
	task int
	// lookups counts CTRL_CMD_GETFAMILY requests.
	lookups int
	// sent is closed and replaced whenever a command or a lookup is
	// recorded.
	sent chan struct{}
}

// fakeCmd is one nbd command as the fake driver decoded it.
type fakeCmd struct {
	cmd   uint8
	flags netlink.HeaderFlags
	attrs map[uint16]uint64 // integer attributes, by NBD_ATTR_*
	has   map[uint16]bool
	index int // NBD_ATTR_INDEX, -1 when absent
	ident string
	fds   []int
	// sockets: every fd named a socket of this process when it arrived.
	sockets bool
}

// newFakeKernel returns a loaded fake driver with devices nbd0..n-1.
func newFakeKernel(t *testing.T, n int) *fakeKernel {
	t.Helper()
	k := &fakeKernel{
		t: t, sys: t.TempDir(), proc: t.TempDir(), familyID: 0x1f, groupID: 9, devices: n,
		loaded: true, refuse: map[uint8]syscall.Errno{}, silence: map[uint8]bool{}, task: 900001, sent: make(chan struct{}),
	}
	for i := range n {
		k.write(i, "size", "0")
	}
	k.writeProc("self/status", "Name:\tattach.test\nNSpid:\t"+strconv.Itoa(os.Getpid())+"\n")
	k.writeProc(strconv.Itoa(k.task)+"/status", "Tgid:\t"+strconv.Itoa(os.Getpid())+"\nPid:\t"+strconv.Itoa(k.task)+"\n")
	return k
}

func (k *fakeKernel) host() host { return host{dial: k.dial, sys: k.sys, proc: k.proc} }

func (k *fakeKernel) writeProc(name, content string) {
	p := filepath.Join(k.proc, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		k.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		k.t.Fatal(err)
	}
}

// write sets /sys/block/nbdI/NAME, ending in "\n" as the kernel's do.
func (k *fakeKernel) write(i int, name, value string) {
	p := filepath.Join(k.sys, "nbd"+strconv.Itoa(i), name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		k.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(value+"\n"), 0o644); err != nil {
		k.t.Fatal(err)
	}
}

func (k *fakeKernel) remove(i int, name string) {
	if err := os.RemoveAll(filepath.Join(k.sys, "nbd"+strconv.Itoa(i), name)); err != nil {
		k.t.Fatal(err)
	}
}

// connected sets nbdI up as a device attached by another program, with
// conns connections and backend identifier ident.
func (k *fakeKernel) connected(i int, ident string, size int64, conns int) {
	k.write(i, "pid", "4242")
	k.write(i, "size", strconv.FormatInt(size/512, 10))
	k.write(i, "ro", "0")
	if ident != "" {
		k.write(i, "backend", ident)
	}
	for c := range conns {
		if err := os.MkdirAll(filepath.Join(k.sys, "nbd"+strconv.Itoa(i), "mq", strconv.Itoa(c)), 0o755); err != nil {
			k.t.Fatal(err)
		}
	}
}

func (k *fakeKernel) isConnected(i int) bool {
	_, err := os.Stat(filepath.Join(k.sys, "nbd"+strconv.Itoa(i), "pid"))
	return err == nil
}

// waitCommands waits until n commands of kind cmd arrived, failing the
// test after 10 s.
func (k *fakeKernel) waitCommands(cmd uint8, n int) []fakeCmd {
	k.t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		k.mu.Lock()
		var got []fakeCmd
		for _, c := range k.cmds {
			if c.cmd == cmd {
				got = append(got, c)
			}
		}
		sent := k.sent
		k.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-sent:
		case <-deadline.C:
			k.t.Fatalf("waited 10 s for %d commands %d, have %d", n, cmd, len(got))
		}
	}
}

// waitLookups waits until the family was looked up n times.
func (k *fakeKernel) waitLookups(n int) {
	k.t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		k.mu.Lock()
		got, sent := k.lookups, k.sent
		k.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-sent:
		case <-deadline.C:
			k.t.Fatalf("waited 10 s for %d family lookups, have %d", n, got)
		}
	}
}

func (k *fakeKernel) setLoaded(v bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.loaded = v
}

// linkDead multicasts NBD_CMD_LINK_DEAD for device i to every socket in
// the group.
func (k *fakeKernel) linkDead(i int) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(i))
	data, err := ae.Encode()
	if err != nil {
		k.t.Fatal(err)
	}
	gm := genetlink.Message{Header: genetlink.Header{Command: cmdLinkDead, Version: genlVersion}, Data: data}
	b, err := gm.MarshalBinary()
	if err != nil {
		k.t.Fatal(err)
	}
	k.mu.Lock()
	socks := append([]*fakeSocket(nil), k.socks...)
	k.mu.Unlock()
	for _, s := range socks {
		if s.inGroup(k.groupID) {
			s.deliver([]netlink.Message{{Header: netlink.Header{Type: netlink.HeaderType(k.familyID)}, Data: b}})
		}
	}
}

// dial opens a netlink connection to the fake driver, as dialNetlink
// does to the kernel.
func (k *fakeKernel) dial() (*nlConn, error) {
	s := &fakeSocket{k: k, changed: make(chan struct{}), groups: map[uint32]bool{}}
	k.mu.Lock()
	k.socks = append(k.socks, s)
	k.mu.Unlock()
	return newNLConn(genetlink.NewConn(netlink.NewConn(s, 4000)))
}

// handle answers one request; nil: no answer.
func (k *fakeKernel) handle(req netlink.Message) []netlink.Message {
	var gm genetlink.Message
	if err := gm.UnmarshalBinary(req.Data); err != nil {
		return k.errno(req, unix.EINVAL)
	}
	if req.Header.Type == unix.GENL_ID_CTRL {
		return k.family(req, gm)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.loaded || req.Header.Type != netlink.HeaderType(k.familyID) {
		return k.errno(req, unix.ENOENT)
	}
	c, err := decodeFakeCmd(gm)
	if err != nil {
		k.t.Errorf("fake kernel: command %d: %v", gm.Header.Command, err)
		return k.errno(req, unix.EINVAL)
	}
	c.flags = req.Header.Flags
	k.cmds = append(k.cmds, c)
	close(k.sent)
	k.sent = make(chan struct{})
	if k.silence[c.cmd] {
		return nil
	}
	if e, ok := k.refuse[c.cmd]; ok {
		return k.errno(req, e)
	}
	var reply []byte
	switch c.cmd {
	case cmdConnect:
		index := c.index
		if index < 0 {
			for i := range k.devices {
				if !k.isConnected(i) {
					index = i
					break
				}
			}
			if index < 0 {
				return k.errno(req, unix.ENOSPC)
			}
		}
		if index >= k.devices {
			return k.errno(req, unix.EINVAL)
		}
		if k.isConnected(index) {
			return k.errno(req, unix.EBUSY)
		}
		k.write(index, "size", strconv.FormatUint(c.attrs[attrSizeBytes]/512, 10))
		k.write(index, "ro", strconv.FormatUint(c.attrs[attrServerFlags]>>1&1, 10))
		for n := range c.fds {
			if err := os.MkdirAll(filepath.Join(k.sys, "nbd"+strconv.Itoa(index), "mq", strconv.Itoa(n)), 0o755); err != nil {
				k.t.Fatal(err)
			}
		}
		if c.ident != "" {
			k.write(index, "backend", c.ident)
		}
		k.write(index, "pid", strconv.Itoa(k.task))
		if k.silentConnect {
			return nil
		}
		ae := netlink.NewAttributeEncoder()
		ae.Uint32(attrIndex, uint32(index))
		reply, _ = ae.Encode()
	case cmdDisconnect:
		if c.index < 0 || c.index >= k.devices {
			return k.errno(req, unix.EINVAL)
		}
		k.remove(c.index, "pid")
		k.remove(c.index, "backend")
		k.remove(c.index, "mq")
		k.write(c.index, "size", "0")
	case cmdReconfigure:
		if c.index < 0 || c.index >= k.devices || !k.isConnected(c.index) {
			return k.errno(req, unix.EINVAL)
		}
		if b, _ := os.ReadFile(filepath.Join(k.sys, "nbd"+strconv.Itoa(c.index), "backend")); c.ident != string(b[:max(len(b)-1, 0)]) {
			return k.errno(req, unix.EINVAL)
		}
		if c.has[attrSizeBytes] {
			// nbd_genl_size_set: the running device takes the new size.
			k.write(c.index, "size", strconv.FormatUint(c.attrs[attrSizeBytes]/512, 10))
		}
	case cmdStatus:
		ae := netlink.NewAttributeEncoder()
		ae.Nested(attrDeviceList, func(list *netlink.AttributeEncoder) error {
			for i := range k.devices {
				if c.index >= 0 && i != c.index {
					continue
				}
				list.Nested(deviceItem, func(item *netlink.AttributeEncoder) error {
					item.Uint32(deviceIndex, uint32(i))
					conn := uint8(0)
					if k.isConnected(i) {
						conn = 1
					}
					item.Uint8(deviceConnected, conn)
					return nil
				})
			}
			return nil
		})
		reply, _ = ae.Encode()
	default:
		return k.errno(req, unix.EOPNOTSUPP)
	}
	if req.Header.Flags&netlink.Acknowledge != 0 {
		return k.errno(req, 0)
	}
	return k.reply(req, c.cmd, reply)
}

func (k *fakeKernel) reply(req netlink.Message, cmd uint8, data []byte) []netlink.Message {
	gm := genetlink.Message{Header: genetlink.Header{Command: cmd, Version: genlVersion}, Data: data}
	b, err := gm.MarshalBinary()
	if err != nil {
		k.t.Fatal(err)
	}
	return []netlink.Message{{Header: netlink.Header{Type: req.Header.Type, Sequence: req.Header.Sequence, PID: req.Header.PID}, Data: b}}
}

// errno is the kernel's error message (0: acknowledgement).
func (k *fakeKernel) errno(req netlink.Message, e syscall.Errno) []netlink.Message {
	msgs, _ := nltest.Error(int(e), []netlink.Message{req})
	return msgs
}

// family answers CTRL_CMD_GETFAMILY for "nbd" while the module is loaded.
func (k *fakeKernel) family(req netlink.Message, gm genetlink.Message) []netlink.Message {
	ad, err := netlink.NewAttributeDecoder(gm.Data)
	if err != nil {
		return k.errno(req, unix.EINVAL)
	}
	var name string
	for ad.Next() {
		if ad.Type() == unix.CTRL_ATTR_FAMILY_NAME {
			name = ad.String()
		}
	}
	k.mu.Lock()
	loaded := k.loaded
	k.lookups++
	close(k.sent)
	k.sent = make(chan struct{})
	k.mu.Unlock()
	if !loaded || name != genlFamily {
		return k.errno(req, unix.ENOENT)
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint16(unix.CTRL_ATTR_FAMILY_ID, k.familyID)
	ae.String(unix.CTRL_ATTR_FAMILY_NAME, genlFamily)
	ae.Uint32(unix.CTRL_ATTR_VERSION, genlVersion)
	ae.Nested(unix.CTRL_ATTR_MCAST_GROUPS, func(groups *netlink.AttributeEncoder) error {
		groups.Nested(1, func(g *netlink.AttributeEncoder) error {
			g.String(unix.CTRL_ATTR_MCAST_GRP_NAME, genlMcastGroup)
			g.Uint32(unix.CTRL_ATTR_MCAST_GRP_ID, k.groupID)
			return nil
		})
		return nil
	})
	data, err := ae.Encode()
	if err != nil {
		k.t.Fatal(err)
	}
	return k.reply(req, unix.CTRL_CMD_NEWFAMILY, data)
}

// decodeFakeCmd decodes an nbd command's attributes the way the driver's
// policy reads them: integers by their declared width.
func decodeFakeCmd(gm genetlink.Message) (fakeCmd, error) {
	c := fakeCmd{cmd: gm.Header.Command, attrs: map[uint16]uint64{}, has: map[uint16]bool{}, index: -1, sockets: true}
	ad, err := netlink.NewAttributeDecoder(gm.Data)
	if err != nil {
		return c, err
	}
	for ad.Next() {
		c.has[ad.Type()] = true
		switch ad.Type() {
		case attrIndex:
			c.index = int(ad.Uint32())
		case attrSizeBytes, attrBlockSizeBytes, attrTimeout, attrServerFlags, attrClientFlags, attrDeadConnTimeout:
			c.attrs[ad.Type()] = ad.Uint64()
		case attrBackendIdentifier:
			c.ident = ad.String()
		case attrSockets:
			ad.Nested(func(socks *netlink.AttributeDecoder) error {
				for socks.Next() {
					socks.Nested(func(item *netlink.AttributeDecoder) error {
						for item.Next() {
							if item.Type() == sockFD {
								fd := int(item.Uint32())
								c.fds = append(c.fds, fd)
								if _, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
									c.sockets = false
								}
							}
						}
						return item.Err()
					})
				}
				return socks.Err()
			})
		}
	}
	return c, ad.Err()
}

// fakeSocket is a netlink.Socket to the fake driver: what is sent is
// answered at once into a queue that Receive reads, blocking (within the
// read deadline) when it is empty.
type fakeSocket struct {
	k *fakeKernel

	mu       sync.Mutex
	pending  [][]netlink.Message
	closed   bool
	deadline time.Time
	changed  chan struct{} // closed and replaced on every change above
	groups   map[uint32]bool
}

func (s *fakeSocket) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *fakeSocket) deliver(msgs []netlink.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending = append(s.pending, msgs)
	s.notify()
}

func (s *fakeSocket) inGroup(g uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.groups[g]
}

func (s *fakeSocket) Send(m netlink.Message) error {
	if r := s.k.handle(m); r != nil {
		s.deliver(r)
	}
	return nil
}

func (s *fakeSocket) SendMessages(ms []netlink.Message) error {
	for _, m := range ms {
		if err := s.Send(m); err != nil {
			return err
		}
	}
	return nil
}

func (s *fakeSocket) Receive() ([]netlink.Message, error) {
	for {
		s.mu.Lock()
		if len(s.pending) > 0 {
			m := s.pending[0]
			s.pending = s.pending[1:]
			s.mu.Unlock()
			return m, nil
		}
		if s.closed {
			s.mu.Unlock()
			return nil, net.ErrClosed
		}
		dl, changed := s.deadline, s.changed
		s.mu.Unlock()
		if dl.IsZero() {
			<-changed
			continue
		}
		wait := time.Until(dl)
		if wait <= 0 {
			return nil, os.ErrDeadlineExceeded
		}
		t := time.NewTimer(wait)
		select {
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

func (s *fakeSocket) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.notify()
	return nil
}

func (s *fakeSocket) JoinGroup(g uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.groups[g] = true
	return nil
}

func (s *fakeSocket) LeaveGroup(g uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.groups, g)
	return nil
}

func (s *fakeSocket) SetDeadline(t time.Time) error { return s.SetReadDeadline(t) }

func (s *fakeSocket) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deadline = t
	s.notify()
	return nil
}

func (s *fakeSocket) SetWriteDeadline(time.Time) error { return nil }

func (s *fakeSocket) SetOption(netlink.ConnOption, bool) error { return nil }
