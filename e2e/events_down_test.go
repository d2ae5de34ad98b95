package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestEventsDownAndUp: rbd-nbd events reports a resource taken down with
// `down` and brought up again, as status does (down:true, down:false).
func TestEventsDownAndUp(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	c.a.ctl("secondary", "r0")
	ev := StartProcess(t, Binary(), "--socket", c.a.socket, "events", "r0")
	// has reports whether a change event of r0's resource object says
	// what.
	has := func(what string) func() bool {
		return func() bool {
			for _, l := range strings.Split(ev.Output(), "\n") {
				if strings.HasPrefix(l, "change resource name:r0 ") && strings.Contains(l+" ", " "+what+" ") {
					return true
				}
			}
			return false
		}
	}
	WaitFor(t, 30*time.Second, "the dump", func() bool { return strings.Contains(ev.Output(), "exists -") })
	if strings.Contains(ev.Output(), "down:") {
		t.Fatalf("the dump of an up resource says down:\n%s", ev.Output())
	}
	c.a.ctl("down", "r0")
	WaitFor(t, 30*time.Second, "the down event", has("down:true"))
	if out := c.a.ctl("status", "r0"); !strings.Contains(out, "down") {
		t.Fatalf("status after down: %s", out)
	}
	// up R starts it again with the kept configuration (as drbdadm up R).
	if r := c.a.tryCtl("up"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "resource file") {
		t.Fatalf("up without a file or a name: exit %d, %s", r.ExitCode, r.Stderr)
	}
	c.a.ctl("up", "r0")
	WaitFor(t, 30*time.Second, "the up event", has("down:false"))
	if r := c.a.tryCtl("up", "r0"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "up already") {
		t.Fatalf("up R on a resource that is up: exit %d, %s", r.ExitCode, r.Stderr)
	}
}
