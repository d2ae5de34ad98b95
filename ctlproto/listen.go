package ctlproto

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ListenConfig says who may reach the control socket through the file
// system. Peer credentials then decide what each client may do (Config's
// AdminUIDs and ReadGIDs).
type ListenConfig struct {
	// UID, when not -1, owns the socket and a directory Listen creates, so
	// that this (non-root) admin user can connect.
	UID int
	// GID, when not -1, is the group of the socket and of a directory
	// Listen creates, with modes 0660 and 0710, so that its members can
	// connect (to read, unless also admins).
	GID int
}

// DefaultListenConfig returns the root-only configuration: socket 0600 in
// a 0700 directory.
func DefaultListenConfig() ListenConfig { return ListenConfig{UID: -1, GID: -1} }

// Listen creates the control socket at path. It creates the directory
// (mode 0700, or 0710 with a group) when missing and leaves an existing one
// as it is; it removes a stale socket that nobody answers on, and fails
// with ErrSocketInUse when another daemon does. The socket gets mode 0600
// (0660 with a group); the listener removes it when closed.
func Listen(path string, cfg ListenConfig) (*net.UnixListener, error) {
	dirMode, sockMode := os.FileMode(0o700), os.FileMode(0o600)
	if cfg.GID >= 0 {
		dirMode, sockMode = 0o710, 0o660
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("ctlproto: create socket directory: %w", err)
		}
		if err := setOwner(dir, dirMode, cfg); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("ctlproto: socket directory: %w", err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("ctlproto: listen on %s: %w", path, err)
	}
	if err := setOwner(path, sockMode, cfg); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func setOwner(path string, mode os.FileMode, cfg ListenConfig) error {
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("ctlproto: %w", err)
	}
	if cfg.UID >= 0 || cfg.GID >= 0 {
		if err := os.Chown(path, cfg.UID, cfg.GID); err != nil {
			return fmt.Errorf("ctlproto: %w", err)
		}
	}
	return nil
}

// removeStale removes a socket left behind by a daemon that is gone.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ctlproto: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("ctlproto: %s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w: %s", ErrSocketInUse, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("ctlproto: probe %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ctlproto: remove stale socket: %w", err)
	}
	return nil
}

// peerCred returns the credentials of a Unix socket's peer; with groups it
// also reads the supplementary groups from /proc (best effort: the process
// may be gone already).
func peerCred(c net.Conn, groups bool) (Cred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Cred{}, fmt.Errorf("ctlproto: %T is not a Unix socket", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Cred{}, err
	}
	var u *unix.Ucred
	var uerr error
	if err := raw.Control(func(fd uintptr) {
		u, uerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, err
	}
	if uerr != nil {
		return Cred{}, fmt.Errorf("ctlproto: SO_PEERCRED: %w", uerr)
	}
	cred := Cred{PID: u.Pid, UID: u.Uid, GID: u.Gid}
	if groups {
		cred.Groups = procGroups(u.Pid)
	}
	return cred, nil
}

// procGroups reads the supplementary groups of a process.
func procGroups(pid int32) []uint32 {
	f, err := os.Open("/proc/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var out []uint32
		for _, g := range strings.Fields(rest) {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				out = append(out, uint32(n))
			}
		}
		return out
	}
	return nil
}
