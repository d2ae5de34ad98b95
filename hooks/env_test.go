package hooks

import (
	"slices"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/config"
)

func TestEnviron(t *testing.T) {
	e := Env{
		Resource: "r0", NodeID: 1, PeerNodeID: 2, Disk: "/dev/vdb", Role: "Primary",
		Extra: map[string]string{
			EnvPeerAddress:        "127.0.0.1:7789",
			"RBD_NBD_HANDLER":     "spoofed",
			"RBD_NBD_DISK":        "/spoofed",
			"LD_PRELOAD":          "/evil.so",
			"PATH":                "/evil",
			"RBD_NBD_":            "x",
			"RBD_NBD_lower":       "x",
			"RBD_NBD_NUL":         "a\x00b",
			"RBD_NBD_WITH_EQUALS": "a=b",
		},
	}
	env, dropped := e.environ(FencePeer, "/bin")
	want := []string{
		"HOME=/",
		"PATH=/bin",
		"RBD_NBD_DISK=/dev/vdb",
		"RBD_NBD_HANDLER=fence-peer",
		"RBD_NBD_NODE_ID=1",
		"RBD_NBD_PEER_ADDRESS=127.0.0.1:7789",
		"RBD_NBD_PEER_NODE_ID=2",
		"RBD_NBD_RESOURCE=r0",
		"RBD_NBD_ROLE=Primary",
		"RBD_NBD_WITH_EQUALS=a=b",
	}
	if !slices.Equal(env, want) {
		t.Errorf("environ:\n got %q\nwant %q", env, want)
	}
	wantDropped := []string{"LD_PRELOAD", "PATH", "RBD_NBD_", "RBD_NBD_DISK", "RBD_NBD_HANDLER", "RBD_NBD_NUL", "RBD_NBD_lower"}
	if !slices.Equal(dropped, wantDropped) {
		t.Errorf("dropped %q, want %q", dropped, wantDropped)
	}
}

func TestNewEnvAndWith(t *testing.T) {
	r := config.Resource{
		Name:  "r0",
		Local: config.Node{Name: "a", ID: 3, Address: "127.0.0.1:7000", Disk: "/tmp/disk"},
		Peer:  config.Node{Name: "b", ID: 4, Address: "127.0.0.1:7001"},
	}.Default()
	e := NewEnv(r, "Secondary")
	if e.Resource != "r0" || e.NodeID != 3 || e.PeerNodeID != 4 || e.Disk != "/tmp/disk" || e.Role != "Secondary" {
		t.Errorf("NewEnv = %+v", e)
	}
	for k, v := range map[string]string{EnvNodeName: "a", EnvPeerName: "b", EnvPeerAddress: "127.0.0.1:7001", EnvMetaDisk: "internal", EnvExport: "r0"} {
		if e.Extra[k] != v {
			t.Errorf("Extra[%s] = %q, want %q", k, e.Extra[k], v)
		}
	}
	e2 := e.With(EnvOldRole, "Primary")
	if e2.Extra[EnvOldRole] != "Primary" || e2.Extra[EnvNodeName] != "a" {
		t.Errorf("With: %v", e2.Extra)
	}
	if _, ok := e.Extra[EnvOldRole]; ok {
		t.Errorf("With changed the original's map")
	}
	var zero Env
	if z := zero.With(EnvDevice, "/dev/nbd0"); z.Extra[EnvDevice] != "/dev/nbd0" {
		t.Errorf("With on the zero Env: %v", z.Extra)
	}
}

func TestExtraNamesValid(t *testing.T) {
	// Every documented extra must pass the filter the runner applies.
	for _, n := range []string{EnvNodeName, EnvPeerName, EnvPeerAddress, EnvMetaDisk, EnvExport,
		EnvConfigFile, EnvDevice, EnvDiskState, EnvPeerDiskState, EnvPeerRole, EnvConnState,
		EnvOldRole, EnvResyncBytes, EnvOutOfSyncBytes, EnvOutOfSyncStart, EnvOutOfSyncLen,
		EnvIOError, EnvSplitBrain} {
		if !validExtra(n) {
			t.Errorf("documented extra %s is rejected", n)
		}
	}
}
