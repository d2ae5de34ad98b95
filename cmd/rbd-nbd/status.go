package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

func newStatusCmd(g *globalOptions) *cobra.Command {
	var asJSON bool
	var watch time.Duration
	cmd := &cobra.Command{
		Use:   "status [RESOURCE] [--json] [--watch[=1s]]",
		Short: "Show the status of one resource or of all",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			timeout := callTimeout
			if watch > 0 {
				timeout = 0 // until interrupted
			}
			return withClient(cmd.Context(), g, timeout, func(ctx context.Context, c *ctlproto.Client) error {
				for {
					sts, err := c.Status(ctx, name)
					if err != nil {
						return err
					}
					out := cmd.OutOrStdout()
					if watch > 0 && !asJSON {
						// Redraw in place, as watch(1) does.
						fmt.Fprint(out, "\033[H\033[2J")
						fmt.Fprintf(out, "every %v: rbd-nbd status %s    %s\n\n", watch, name, time.Now().Format(time.TimeOnly))
					}
					if asJSON {
						if err := writeStatusJSON(out, sts); err != nil {
							return err
						}
					} else {
						for _, st := range sts {
							writeStatusText(out, st)
						}
					}
					if watch <= 0 {
						return nil
					}
					select {
					case <-time.After(watch):
					case <-ctx.Done():
						return nil
					}
				}
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array, one object per resource")
	cmd.Flags().DurationVar(&watch, "watch", 0, "print again every interval (e.g. 1s) until interrupted")
	cmd.Flags().Lookup("watch").NoOptDefVal = "1s"
	return cmd
}

// statusJSON renders one status as a JSON object with the event keys, in
// tag order.
func statusJSON(st resource.Status) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for f := ctlproto.FieldName; ctlproto.AllFields.Has(f); f++ {
		if f > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.Key())
		v, _ := json.Marshal(ctlproto.FieldJSON(st, f))
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes()
}

func writeStatusJSON(w io.Writer, sts []resource.Status) error {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, st := range sts {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(statusJSON(st))
	}
	b.WriteString("]\n")
	_, err := w.Write(b.Bytes())
	return err
}

// writeStatusText prints a resource the way drbdadm status does: the
// resource, its disk, the peer connection and the peer's disk.
func writeStatusText(w io.Writer, st resource.Status) {
	fmt.Fprintf(w, "%s role:%s generation:%d\n", st.Name, st.Role, st.Generation)
	fmt.Fprintf(w, "  disk:%s", st.Disk)
	if st.Size > 0 {
		fmt.Fprintf(w, " size:%d", st.Size)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  peer node-id:%d connection:%s role:%s\n", st.PeerNodeID, st.Conn, st.PeerRole)
	fmt.Fprintf(w, "    peer-disk:%s", st.PeerDisk)
	if st.OutOfSync > 0 {
		fmt.Fprintf(w, " out-of-sync:%d", st.OutOfSync)
	}
	if st.ResyncTotal > 0 {
		fmt.Fprintf(w, " done:%.2f%% eta:%s", 100*float64(st.ResyncDone)/float64(st.ResyncTotal),
			ctlproto.FieldText(st, ctlproto.FieldResyncETA))
	}
	fmt.Fprintln(w)
}
