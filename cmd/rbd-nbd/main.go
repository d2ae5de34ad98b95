// Command rbd-nbd is the replicated NBD block device: the daemon, the
// standalone server and the administration commands, one binary.
package main

import (
	"os"
	"syscall"
)

func main() {
	if err := newRootCmdExec(syscall.Exec).Execute(); err != nil {
		os.Exit(1)
	}
}
