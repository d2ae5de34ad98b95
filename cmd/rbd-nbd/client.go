package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/version"
)

// callTimeout bounds one command's conversation with the daemon.
const callTimeout = 30 * time.Second

// dial connects to the daemon at the socket the flags name, with the
// client's registry, and says hello.
func dial(ctx context.Context, g *globalOptions) (*ctlproto.Client, error) {
	path := g.socketPath()
	c, err := ctlproto.Dial(ctx, path, ctlproto.DefaultRegistry(), version.Version)
	if err != nil {
		return nil, dialError(path, err)
	}
	return c, nil
}

// dialError explains why the daemon could not be reached.
func dialError(path string, err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("cannot reach the daemon at %s: is `rbd-nbd daemon` running? (--socket or $%s name another socket): %w", path, SocketEnv, err)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("no permission to connect to %s: run as root, or as a user of the daemon's socket group: %w", path, err)
	}
	var pe *ctlproto.Error
	if errors.As(err, &pe) {
		return fmt.Errorf("the daemon at %s refused the connection: %w", path, explain(ctlproto.DefaultRegistry(), ctlproto.HelloInfo{}, err))
	}
	return fmt.Errorf("talking to the daemon at %s: %w", path, err)
}

// withClient runs fn with a connected client and a context that ends on
// SIGINT/SIGTERM or after timeout (0: no timeout); it turns daemon errors
// into sentences for people.
func withClient(parent context.Context, g *globalOptions, timeout time.Duration, fn func(ctx context.Context, c *ctlproto.Client) error) error {
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c, err := dial(ctx, g)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := fn(ctx, c); err != nil {
		return explain(c.Registry(), c.Daemon(), err)
	}
	return nil
}

// optionName names a tag as the command line knows it: "--protocol", or
// the tag's dotted name when no option sets it.
func optionName(reg *ctlproto.Registry, tag uint16) string {
	t, ok := reg.Tag(tag)
	switch {
	case !ok:
		return fmt.Sprintf("tag %d", tag)
	case t.Flag != "":
		return "--" + t.Flag
	}
	return t.Name
}

func daemonVersion(h ctlproto.HelloInfo) string {
	if h.Version == "" {
		return "unknown"
	}
	return h.Version
}

// daemonDesc names the daemon in a refusal: its software version, which
// development builds share, and the control protocol it speaks, which
// says what it supports.
func daemonDesc(h ctlproto.HelloInfo) string {
	return fmt.Sprintf("version %s, control protocol %d.%d", daemonVersion(h), h.Major, h.Minor)
}

// explain turns an error reply into a sentence that says what to do.
func explain(reg *ctlproto.Registry, daemon ctlproto.HelloInfo, err error) error {
	var e *ctlproto.Error
	if !errors.As(err, &e) {
		return err
	}
	switch e.Code {
	case ctlproto.CodeUnknownMandatoryTag:
		var parts []string
		for _, tag := range e.Tags {
			parts = append(parts, fmt.Sprintf("%s (tag %d)", optionName(reg, tag), tag))
		}
		return fmt.Errorf("the daemon (%s) does not support %s: upgrade the daemon or leave the option out",
			daemonDesc(daemon), strings.Join(parts, ", "))
	case ctlproto.CodeInvalidValue:
		what := e.Path
		if t, ok := reg.TagByName(e.Path); ok && t.Flag != "" {
			what = fmt.Sprintf("%s (--%s)", e.Path, t.Flag)
		}
		if e.Allowed == "" {
			// A value of the right form that did not work (a file that
			// cannot be opened, say): the daemon's message says why.
			return fmt.Errorf("invalid value %q for %s: %s", e.Value, what, e.Message)
		}
		return fmt.Errorf("invalid value %q for %s: allowed %s", e.Value, what, e.Allowed)
	case ctlproto.CodeGenerationMismatch:
		return fmt.Errorf("the configuration changed meanwhile (it is now at generation %d): read it again and retry", e.Generation)
	case ctlproto.CodeUnknownMessageType:
		return fmt.Errorf("the daemon (%s) does not know this command: upgrade the daemon", daemonDesc(daemon))
	case ctlproto.CodeProtocolVersionUnsupported:
		return fmt.Errorf("the daemon does not speak this tool's protocol (%d.%d): %s", ctlproto.ProtoMajor, ctlproto.ProtoMinor, e.Message)
	}
	return err
}

// warnIgnored tells the user which options the daemon skipped.
func warnIgnored(w io.Writer, c *ctlproto.Client, ignored []uint16) {
	for _, tag := range ignored {
		fmt.Fprintf(w, "warning: the daemon (%s) ignored %s (tag %d): it does not support it\n",
			daemonDesc(c.Daemon()), optionName(c.Registry(), tag), tag)
	}
}
