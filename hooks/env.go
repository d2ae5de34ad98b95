package hooks

import (
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/rbd-nbd/rbd-nbd/config"
)

// The variables every handler gets.
const (
	EnvResource   = "RBD_NBD_RESOURCE"     // the resource name
	EnvHandler    = "RBD_NBD_HANDLER"      // the handler name
	EnvNodeID     = "RBD_NBD_NODE_ID"      // this node's id, decimal
	EnvPeerNodeID = "RBD_NBD_PEER_NODE_ID" // the peer's node id, decimal
	EnvDisk       = "RBD_NBD_DISK"         // this node's backing file or device
	EnvRole       = "RBD_NBD_ROLE"         // this node's role: Primary, Secondary, Unknown
)

// Extra variables: NewEnv sets the first group from the configuration; the
// daemon adds the others where docs/hooks.md says they are set. Their names
// are here so that the daemon and the documentation agree.
const (
	EnvNodeName    = "RBD_NBD_NODE_NAME"    // this node's name
	EnvPeerName    = "RBD_NBD_PEER_NAME"    // the peer's name
	EnvPeerAddress = "RBD_NBD_PEER_ADDRESS" // the peer's host:port
	EnvMetaDisk    = "RBD_NBD_META_DISK"    // "internal" or the meta-data path
	EnvExport      = "RBD_NBD_EXPORT"       // the NBD export name

	EnvConfigFile     = "RBD_NBD_CONFIG_FILE"        // the resource file the daemon loaded
	EnvDevice         = "RBD_NBD_DEVICE"             // the attached /dev/nbdX, when there is one
	EnvDiskState      = "RBD_NBD_DISK_STATE"         // this node's disk state, e.g. UpToDate
	EnvPeerDiskState  = "RBD_NBD_PEER_DISK_STATE"    // the peer's disk state, e.g. DUnknown
	EnvPeerRole       = "RBD_NBD_PEER_ROLE"          // the peer's role
	EnvConnState      = "RBD_NBD_CONN_STATE"         // the connection state, e.g. SyncTarget
	EnvOldRole        = "RBD_NBD_OLD_ROLE"           // role-change: the role before the change
	EnvResyncBytes    = "RBD_NBD_RESYNC_BYTES"       // before-resync-*: bytes the resync will copy
	EnvOutOfSyncBytes = "RBD_NBD_OUT_OF_SYNC_BYTES"  // out-of-sync: bytes found to differ
	EnvOutOfSyncStart = "RBD_NBD_OUT_OF_SYNC_OFFSET" // out-of-sync: offset of the first differing byte
	EnvOutOfSyncLen   = "RBD_NBD_OUT_OF_SYNC_LENGTH" // out-of-sync: length from it to the end of the last
	EnvIOError        = "RBD_NBD_IO_ERROR"           // local-io-error: the error, as text
	EnvSplitBrain     = "RBD_NBD_SPLIT_BRAIN"        // split-brain: how it was (or was not) resolved
)

// Env is what a handler learns about the resource through its environment.
// The zero value is usable; NewEnv fills it from a configuration.
type Env struct {
	// Resource is the resource name (RBD_NBD_RESOURCE).
	Resource string
	// NodeID is this node's id (RBD_NBD_NODE_ID).
	NodeID uint32
	// PeerNodeID is the peer's id (RBD_NBD_PEER_NODE_ID).
	PeerNodeID uint32
	// Disk is this node's backing file or device (RBD_NBD_DISK).
	Disk string
	// Role is this node's role, as resource.Role.String() spells it
	// (RBD_NBD_ROLE).
	Role string
	// Extra holds more variables. Names must start with "RBD_NBD_" and
	// use only A-Z, 0-9 and '_'; others, and the standard names above,
	// are dropped (and logged), so a caller can neither override what
	// the handler relies on nor inject LD_PRELOAD and the like.
	Extra map[string]string
}

// NewEnv returns the Env of resource r on this node, with role the node's
// current role, and the configuration's names and addresses as extras.
func NewEnv(r config.Resource, role string) Env {
	e := Env{
		Resource:   r.Name,
		NodeID:     r.Local.ID,
		PeerNodeID: r.Peer.ID,
		Disk:       r.Local.Disk,
		Role:       role,
		Extra:      map[string]string{},
	}
	for k, v := range map[string]string{
		EnvNodeName:    r.Local.Name,
		EnvPeerName:    r.Peer.Name,
		EnvPeerAddress: r.Peer.Address,
		EnvMetaDisk:    r.Local.Meta,
		EnvExport:      r.Local.Export,
	} {
		if v != "" {
			e.Extra[k] = v
		}
	}
	return e
}

// With returns a copy of e with the extra variable name set to value; e
// itself, and its Extra map, are not changed.
func (e Env) With(name, value string) Env {
	x := make(map[string]string, len(e.Extra)+1)
	maps.Copy(x, e.Extra)
	x[name] = value
	e.Extra = x
	return e
}

// DefaultPath is the PATH handlers get unless Config.Path says otherwise.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// standardEnv are the names Env's fields and the handler name own.
var standardEnv = [...]string{EnvResource, EnvHandler, EnvNodeID, EnvPeerNodeID, EnvDisk, EnvRole}

// validExtra reports whether name may be set through Env.Extra.
func validExtra(name string) bool {
	rest, ok := strings.CutPrefix(name, "RBD_NBD_")
	if !ok || rest == "" || slices.Contains(standardEnv[:], name) {
		return false
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// environ returns the complete, sorted environment of handler n, and the
// names of the extras it dropped.
func (e Env) environ(n Name, path string) (env []string, dropped []string) {
	vars := map[string]string{
		"PATH":        path,
		"HOME":        "/",
		EnvResource:   e.Resource,
		EnvHandler:    string(n),
		EnvNodeID:     strconv.FormatUint(uint64(e.NodeID), 10),
		EnvPeerNodeID: strconv.FormatUint(uint64(e.PeerNodeID), 10),
		EnvDisk:       e.Disk,
		EnvRole:       e.Role,
	}
	for k, v := range e.Extra {
		if !validExtra(k) || strings.IndexByte(v, 0) >= 0 {
			dropped = append(dropped, k)
			continue
		}
		vars[k] = v
	}
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		env = append(env, k+"="+vars[k])
	}
	slices.Sort(dropped)
	return env, dropped
}
