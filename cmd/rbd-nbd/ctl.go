package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
)

func newCtlCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ctl",
		Short: "Low-level control requests, and protocol debugging",
	}
	cmd.AddCommand(
		newCtlDecodeCmd(),
		newCtlRegistryCmd(),
		newCtlCreateCmd(g),
		newCtlChangeCmd(g),
		newCtlDeleteCmd(g),
		newCtlShowCmd(g),
	)
	return cmd
}

func newCtlDecodeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "decode [FILE|-]",
		Short: "Print captured control frames as readable trees",
		Long: `Print captured control protocol frames (binary, or hex digits with # comments) as trees,
naming tags through this tool's registry; tags it does not know are shown by number.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var data []byte
			var err error
			if len(args) == 0 || args[0] == "-" {
				data, err = io.ReadAll(cmd.InOrStdin())
			} else {
				data, err = os.ReadFile(args[0])
			}
			if err != nil {
				return err
			}
			if !bytes.HasPrefix(data, []byte("RBNC")) {
				if b, herr := ctlproto.ParseHex(data); herr == nil {
					data = b
				}
			}
			// The reply limits, the larger: a capture holds replies
			// and events too (a status of many resources), which the
			// request limits would refuse.
			if err := ctlproto.DefaultRegistry().Dump(cmd.OutOrStdout(), data, ctlproto.ReplyLimits()); err != nil {
				return fmt.Errorf("decode: %w", err)
			}
			return nil
		},
	}
}

func newCtlRegistryCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "registry",
		Short: "Print every tag, message type and error code this tool knows",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg := ctlproto.DefaultRegistry()
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "TAG\tNAME\tTYPE\tUNIT\tFLAGS\tOPTION\tSINCE")
			for _, t := range reg.Tags() {
				var fl []string
				if t.Mandatory {
					fl = append(fl, "mandatory")
				}
				if t.Repeated {
					fl = append(fl, "repeated")
				}
				if t.Retired {
					fl = append(fl, "retired")
				}
				opt := "-"
				if t.Flag != "" {
					opt = "--" + t.Flag
				}
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Num, t.Name, t.Type, t.Unit, strings.Join(append(fl, "")[:max(len(fl), 1)], ","), opt, t.Since)
			}
			fmt.Fprintln(w, "\nMESSAGE\tNAME\tACCESS\tSINCE")
			for _, m := range reg.Msgs() {
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", m.Type, m.Name, m.Access, m.Since)
			}
			fmt.Fprintln(w, "\nCODE\tNAME\tSINCE")
			for _, c := range reg.Codes() {
				fmt.Fprintf(w, "%d\t%s\t%s\n", c.Code, c.Name, c.Since)
			}
			return w.Flush()
		},
	}
}

// configFlags are the configuration options of ctl create and ctl change,
// one per configuration tag that has an option name in the registry.
type configFlags struct {
	reg        *ctlproto.Registry
	names      map[string]bool
	dispatcher string
	handlers   []string
}

func addConfigFlags(fs *pflag.FlagSet) *configFlags {
	cf := &configFlags{reg: ctlproto.DefaultRegistry(), names: map[string]bool{}}
	for _, sec := range []uint16{ctlproto.TagResource, ctlproto.TagPeer, ctlproto.TagNet, ctlproto.TagDisk, ctlproto.TagResync, ctlproto.TagHandlers} {
		for _, t := range cf.reg.TagsIn(sec) {
			if t.Flag == "" || t.Type == ctlproto.TypeList || t.Num == ctlproto.TagHandlersDispatcher {
				continue
			}
			doc := t.Doc
			switch t.Unit {
			case ctlproto.UnitMillis:
				doc += " (a duration: 500ms, 5s)"
			case ctlproto.UnitBytes:
				doc += " (bytes; K, M, G, T suffixes)"
			}
			fs.String(t.Flag, "", fmt.Sprintf("%s [%s]", doc, t.Name))
			cf.names[t.Flag] = true
		}
	}
	fs.StringVar(&cf.dispatcher, "dispatcher", "", "handler dispatcher command line [handlers.dispatcher]")
	fs.StringArrayVar(&cf.handlers, "handler", nil, "NAME=COMMAND ARGS...: a handler's command line; NAME= removes it (repeatable) [handlers.handler]")
	return cf
}

// sections returns the configuration sections of the options given.
func (cf *configFlags) sections(fs *pflag.FlagSet) (ctlproto.List, error) {
	var fields []ctlproto.Entry
	// Paths are made absolute here: the daemon runs elsewhere.
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	fs.Visit(func(f *pflag.Flag) {
		if err != nil || !cf.names[f.Name] {
			return
		}
		t, _ := cf.reg.TagByFlag(f.Name)
		var e ctlproto.Entry
		if e, err = ctlproto.ParseValue(t, resolveFlag(cwd, f.Name, f.Value.String())); err == nil {
			fields = append(fields, e)
		}
	})
	if err != nil {
		return nil, err
	}
	if fs.Changed("dispatcher") {
		if len(strings.Fields(cf.dispatcher)) == 0 {
			// No words would send no entry: a change that changes nothing.
			return nil, fmt.Errorf("--dispatcher %q: want a command line; to remove the dispatcher, give the handlers section again with --set-defaults (e.g. --set-defaults --handler-timeout 30s; handlers not given are dropped too)", cf.dispatcher)
		}
		for _, w := range config.ResolveCommand(cwd, strings.Fields(cf.dispatcher)) {
			fields = append(fields, ctlproto.String(ctlproto.TagHandlersDispatcher, w))
		}
	}
	for _, h := range cf.handlers {
		name, cmdline, ok := strings.Cut(h, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("--handler %q: want NAME=COMMAND ARGS... or NAME=", h)
		}
		fields = append(fields, ctlproto.HandlerEntry(name, config.ResolveCommand(cwd, strings.Fields(cmdline))))
	}
	return cf.reg.Sections(fields)
}

// resolveFlag makes the path in the value of an option that names a file
// absolute against cwd, by the rules the resource file's paths follow
// against its folder (config.ResolvePath).
func resolveFlag(cwd, flag, v string) string {
	switch flag {
	case "nbd-listen":
		return config.ResolveNBDListen(cwd, v)
	case "meta-disk":
		if v == config.MetaInternal {
			return v
		}
		return config.ResolvePath(cwd, v)
	case "disk", "nbd-tls-cert", "nbd-tls-key", "nbd-tls-client-ca", "link-tls-cert", "link-tls-key", "link-tls-ca":
		return config.ResolvePath(cwd, v)
	}
	return v
}

func resName(name string) ctlproto.Entry {
	return ctlproto.String(ctlproto.TagResName, name).AsMandatory()
}

func newCtlCreateCmd(g *globalOptions) *cobra.Command {
	var cf *configFlags
	cmd := &cobra.Command{
		Use:   "create RESOURCE [options]",
		Short: "Create a resource from the options given (others take their defaults); it stays down",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			secs, err := cf.sections(cmd.Flags())
			if err != nil {
				return err
			}
			return withClient(cmd.Context(), g, callTimeout, func(ctx context.Context, c *ctlproto.Client) error {
				r, err := c.Call(ctx, ctlproto.MsgCreate, append(ctlproto.List{resName(args[0])}, secs...))
				warnIgnored(cmd.ErrOrStderr(), c, r.Ignored)
				if err != nil {
					return err
				}
				gen, _ := r.Body.Find(ctlproto.TagGeneration)
				fmt.Fprintf(cmd.OutOrStdout(), "%s: created, generation %d\n", args[0], gen.Uint())
				return nil
			})
		},
	}
	cf = addConfigFlags(cmd.Flags())
	return cmd
}

func newCtlChangeCmd(g *globalOptions) *cobra.Command {
	var cf *configFlags
	var opts ctlproto.ChangeOptions
	cmd := &cobra.Command{
		Use:   "change RESOURCE [options]",
		Short: "Change a resource's configuration in one transaction",
		Long: `Change the options given, all or nothing. Without --set-defaults the other fields keep their
values; with it, the fields of each section touched that are not given return to their defaults.
--if-generation N applies the change only if nobody changed the configuration since generation N.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			secs, err := cf.sections(cmd.Flags())
			if err != nil {
				return err
			}
			return withClient(cmd.Context(), g, callTimeout, func(ctx context.Context, c *ctlproto.Client) error {
				a, err := c.Change(ctx, args[0], opts, secs)
				warnIgnored(cmd.ErrOrStderr(), c, a.Ignored)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: generation %d\n", args[0], a.Generation)
				return nil
			})
		},
	}
	cf = addConfigFlags(cmd.Flags())
	cmd.Flags().Uint64Var(&opts.IfGeneration, "if-generation", 0, "apply only if the configuration is at this generation")
	cmd.Flags().BoolVar(&opts.SetDefaults, "set-defaults", false, "fields of the sections touched that are not given return to their defaults")
	return cmd
}

func newCtlDeleteCmd(g *globalOptions) *cobra.Command {
	var ifGen uint64
	cmd := &cobra.Command{
		Use:   "delete RESOURCE",
		Short: "Delete a resource that is down",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd.Context(), g, callTimeout, func(ctx context.Context, c *ctlproto.Client) error {
				return c.Delete(ctx, args[0], ifGen)
			})
		},
	}
	cmd.Flags().Uint64Var(&ifGen, "if-generation", 0, "delete only if the configuration is at this generation")
	return cmd
}

func newCtlShowCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "show RESOURCE",
		Short: "Print a resource's configuration (YAML) and generation",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd.Context(), g, callTimeout, func(ctx context.Context, c *ctlproto.Client) error {
				cfg, gen, err := c.Show(ctx, args[0])
				if err != nil {
					return err
				}
				out, err := showYAML(cfg)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "# generation %d\n%s", gen, out)
				return nil
			})
		},
	}
}

// showYAML renders a resource's configuration for ctl show, with
// resync.latency-target off written as in resource files.
func showYAML(cfg config.Resource) ([]byte, error) {
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	return bytes.ReplaceAll(out, []byte("latency-target: "+config.LatencyTargetOff.String()), []byte("latency-target: off")), nil
}
