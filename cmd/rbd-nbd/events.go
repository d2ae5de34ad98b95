package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
)

func newEventsCmd(g *globalOptions) *cobra.Command {
	var timestamps, asJSON, now bool
	cmd := &cobra.Command{
		Use:   "events [RESOURCE]",
		Short: "Print the daemon's events, one line each",
		Long: `Print every existing object ("exists ..."), then "exists -", then every event as it happens:
create/change/destroy of resources, connections, disks and peers, and call/response of handlers,
e.g. "change resource name:r0 role:Primary". It runs until interrupted, or with --now until
the existing objects are printed.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			err := withClient(cmd.Context(), g, 0, func(ctx context.Context, c *ctlproto.Client) error {
				sub, err := c.Subscribe(ctx, name)
				if err != nil {
					return err
				}
				defer sub.Close()
				w := cmd.OutOrStdout()
				for {
					ev, err := sub.Next(ctx)
					if err != nil {
						if ctx.Err() != nil {
							return nil // interrupted by the user
						}
						if errors.Is(err, io.EOF) {
							return errors.New("the daemon closed the event stream")
						}
						return err
					}
					if err := printEvent(w, ev, timestamps, asJSON); err != nil {
						return err
					}
					if now && ev.Marker() {
						return nil
					}
				}
			})
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVar(&timestamps, "timestamps", false, "start each line with the event's time")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per line")
	f.BoolVar(&now, "now", false, "print the existing objects and exit")
	return cmd
}

func printEvent(w io.Writer, ev ctlproto.Event, timestamps, asJSON bool) error {
	if asJSON {
		if !timestamps {
			ev.Time = time.Time{} // the "time" key only with --timestamps
		}
		b, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintln(w, ev.Text(timestamps))
	return err
}
