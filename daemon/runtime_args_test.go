package daemon

import (
	"testing"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
)

// A resize request reaches the runtime as CmdResize with its flags.
func TestResizeCommandArgs(t *testing.T) {
	cmd, ok := commandOf(ctlproto.MsgResize)
	if !ok || cmd != CmdResize || cmd.String() != "resize" {
		t.Fatalf("commandOf(resize) = %v (%s), %v", cmd, cmd, ok)
	}
	for _, tc := range []struct {
		body                 ctlproto.List
		zeroNew, assumeClean bool
	}{
		{ctlproto.List{ctlproto.String(ctlproto.TagResName, "r0")}, false, false},
		{ctlproto.List{ctlproto.Flag(ctlproto.TagZeroNew, true).AsMandatory()}, true, false},
		{ctlproto.List{ctlproto.Flag(ctlproto.TagAssumeClean, true).AsMandatory()}, false, true},
	} {
		a := argsOf(tc.body)
		if a.ZeroNew != tc.zeroNew || a.AssumeClean != tc.assumeClean || a.Force {
			t.Errorf("argsOf(%v) = %+v, want ZeroNew %v AssumeClean %v", tc.body, a, tc.zeroNew, tc.assumeClean)
		}
	}
}
