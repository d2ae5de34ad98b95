package e2e

import (
	"net"
	"strings"
	"testing"
	"time"
)

// ctlDaemon is a running `rbd-nbd daemon`.
type ctlDaemon struct {
	*Process
	Socket string
}

// startCtlDaemon starts `rbd-nbd daemon --socket socket args...` and waits
// until the socket answers.
func startCtlDaemon(t *testing.T, socket string, args ...string) *ctlDaemon {
	t.Helper()
	p := StartProcess(t, Binary(), append([]string{"daemon", "--socket", socket, "--log-level", "debug"}, args...)...)
	WaitFor(t, 30*time.Second, "rbd-nbd daemon to serve "+socket, func() bool {
		select {
		case <-p.Done():
			t.Fatalf("rbd-nbd daemon exited: %v\n%s", p.Wait(0), p.Output())
		default:
		}
		c, err := net.Dial("unix", socket)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return &ctlDaemon{Process: p, Socket: socket}
}

// ctl runs `rbd-nbd --socket socket args...`.
func ctl(t *testing.T, socket string, args ...string) Result {
	t.Helper()
	return Run(t, 30*time.Second, Binary(), append([]string{"--socket", socket}, args...)...)
}

// mustCtl runs ctl and fails the test unless it exits 0; it returns stdout.
func mustCtl(t *testing.T, socket string, args ...string) string {
	t.Helper()
	r := ctl(t, socket, args...)
	if r.Err != nil {
		t.Fatalf("rbd-nbd %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.Err, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// ctlCreateArgs creates resource name with a minimal valid configuration.
func ctlCreateArgs(name string) []string {
	return []string{"ctl", "create", name, "--disk", "/dev/null", "--address", "127.0.0.1:7789",
		"--peer-node-id", "1", "--peer-address", "127.0.0.1:7790"}
}
