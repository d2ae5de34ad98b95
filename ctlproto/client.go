package ctlproto

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// Client talks to a daemon over one connection. Calls are serialized: one
// request is in flight at a time. A Client is safe for concurrent use.
type Client struct {
	reg *Registry
	lim Limits
	c   net.Conn

	mu     sync.Mutex
	seq    uint32
	wbuf   []byte
	daemon HelloInfo
	closed bool
}

// Dial connects to the daemon's socket and says hello. version is the
// client's software version, sent for the daemon's logs.
func Dial(ctx context.Context, path string, reg *Registry, version string) (*Client, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	cl := NewClient(c, reg)
	h, err := cl.Hello(ctx, version)
	if err != nil {
		c.Close()
		return nil, err
	}
	cl.daemon = h
	return cl, nil
}

// NewClient returns a client on an established connection, without hello.
func NewClient(c net.Conn, reg *Registry) *Client {
	return &Client{reg: reg, lim: ReplyLimits(), c: c}
}

// Daemon returns what the daemon said in Dial's hello.
func (c *Client) Daemon() HelloInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.daemon
}

// Registry returns the client's registry.
func (c *Client) Registry() *Registry { return c.reg }

// Close closes the connection. A call in progress is interrupted and
// fails: the connection is closed before the client's lock is taken,
// since a call holds that lock until its reply comes.
func (c *Client) Close() error {
	err := c.c.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return err
}

// Result is a successful reply.
type Result struct {
	// Header is the reply's frame header.
	Header Header
	// Body is the reply's tag list; it is the caller's.
	Body List
	// Ignored are the optional tags of the request the daemon skipped.
	Ignored []uint16
}

// Call sends a request and waits for its reply. An error reply is returned
// as an *Error (with Result still holding the ignored tags); a broken
// connection closes the client.
func (c *Client) Call(ctx context.Context, t MsgType, body List) (Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	seq, err := c.send(ctx, t, body)
	if err != nil {
		return Result{}, err
	}
	return c.receive(ctx, seq)
}

// send writes one request; c.mu is held.
func (c *Client) send(ctx context.Context, t MsgType, body List) (uint32, error) {
	if c.closed {
		return 0, ErrClientClosed
	}
	c.seq++
	c.wbuf = AppendFrame(c.wbuf[:0], Header{Major: ProtoMajor, Minor: ProtoMinor, Type: t, Seq: c.seq}, body)
	stop := c.watch(ctx)
	_, err := c.c.Write(c.wbuf)
	stop()
	if err != nil {
		return 0, c.broken(ctx, err)
	}
	return c.seq, nil
}

// watch makes ctx's end interrupt blocked I/O on the connection.
func (c *Client) watch(ctx context.Context) (stop func()) {
	if d, ok := ctx.Deadline(); ok {
		c.c.SetDeadline(d)
	} else {
		c.c.SetDeadline(time.Time{})
	}
	cancel := context.AfterFunc(ctx, func() { c.c.SetDeadline(time.Unix(1, 0)) })
	return func() { cancel() }
}

// ctxErr returns ctx's error when an I/O error came from ctx ending: the
// connection's deadline, set from ctx's, may fire a moment before ctx does.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if d, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

// broken closes the client after an I/O error and returns the error to
// report: ctx's, when it ended.
func (c *Client) broken(ctx context.Context, err error) error {
	c.closed = true
	c.c.Close()
	if cerr := ctxErr(ctx, err); cerr != nil {
		return fmt.Errorf("ctlproto: %w", cerr)
	}
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("ctlproto: the daemon closed the connection: %w", err)
	}
	return fmt.Errorf("ctlproto: %w", err)
}

// receive reads the reply to seq; c.mu is held.
func (c *Client) receive(ctx context.Context, seq uint32) (Result, error) {
	stop := c.watch(ctx)
	defer stop()
	for {
		h, raw, err := ReadFrame(c.c, nil, c.lim)
		if err != nil {
			var pe *Error
			if errors.As(err, &pe) && !errors.Is(err, ErrTruncated) {
				c.closed = true
				c.c.Close()
				return Result{}, err
			}
			return Result{}, c.broken(ctx, err)
		}
		if h.Flags&FlagReply == 0 || (h.Seq != seq && h.Seq != 0) {
			continue // not ours; a stray frame is skipped
		}
		return c.decodeReply(h, raw)
	}
}

func (c *Client) decodeReply(h Header, raw []byte) (Result, error) {
	if h.Major != ProtoMajor {
		return Result{Header: h}, &Error{Code: CodeProtocolVersionUnsupported, err: ErrVersion,
			Message: fmt.Sprintf("the daemon answered with protocol %d.%d; this client speaks %d.%d", h.Major, h.Minor, ProtoMajor, ProtoMinor)}
	}
	body, err := DecodeList(raw, c.lim)
	if err != nil {
		return Result{Header: h}, fmt.Errorf("ctlproto: bad reply from the daemon: %w", err)
	}
	res, err := c.reg.CheckReply(body)
	if err != nil {
		return Result{Header: h}, fmt.Errorf("ctlproto: bad reply from the daemon: %w", err)
	}
	r := Result{Header: h, Body: res.Body}
	for e := range body.All(TagIgnoredTag) {
		r.Ignored = append(r.Ignored, uint16(e.Uint()))
	}
	if h.Flags&FlagError != 0 {
		return r, DecodeError(body)
	}
	if len(res.UnknownMandatory) > 0 {
		return r, fmt.Errorf("ctlproto: the daemon's reply has mandatory tags this client does not know: %v (upgrade the client)", res.UnknownMandatory)
	}
	return r, nil
}

// Hello exchanges versions with the daemon.
func (c *Client) Hello(ctx context.Context, version string) (HelloInfo, error) {
	var body List
	if version != "" {
		body = List{String(TagVersion, version)}
	}
	r, err := c.Call(ctx, MsgHello, body)
	if err != nil {
		return HelloInfo{}, err
	}
	return DecodeHello(r.Body), nil
}

// Status returns the status of the named resource, or of all when name is
// "".
func (c *Client) Status(ctx context.Context, name string) ([]resource.Status, error) {
	return c.status(ctx, name, false)
}

// Statistics is Status with each resource's statistics (IO). A daemon
// older than protocol 1.2 refuses with UNKNOWN_MANDATORY_TAG naming
// TagStatistics.
func (c *Client) Statistics(ctx context.Context, name string) ([]resource.Status, error) {
	return c.status(ctx, name, true)
}

func (c *Client) status(ctx context.Context, name string, stats bool) ([]resource.Status, error) {
	body := nameArg(name)
	if stats {
		body = append(body, Flag(TagStatistics, true).AsMandatory())
	}
	r, err := c.Call(ctx, MsgStatus, body)
	if err != nil {
		return nil, err
	}
	var out []resource.Status
	for e := range r.Body.All(TagStatus) {
		st, _ := DecodeStatus(e.List())
		if stats {
			DecodeStatistics(e.List(), &st)
		}
		out = append(out, st)
	}
	return out, nil
}

func nameArg(name string) List {
	if name == "" {
		return nil
	}
	return List{String(TagResName, name).AsMandatory()}
}

// Applied is the outcome of a configuration request.
type Applied struct {
	// Generation is the resource's configuration generation afterwards.
	Generation uint64
	// Ignored are the optional tags of the request the daemon skipped.
	Ignored []uint16
}

func applied(r Result) Applied {
	a := Applied{Ignored: r.Ignored}
	if e, ok := r.Body.Find(TagGeneration); ok {
		a.Generation = e.Uint()
	}
	return a
}

// Create creates a resource from a full configuration.
func (c *Client) Create(ctx context.Context, cfg config.Resource) (Applied, error) {
	r, err := c.Call(ctx, MsgCreate, EncodeConfig(c.reg, cfg))
	return applied(r), err
}

// ChangeOptions qualify a change request.
type ChangeOptions struct {
	// IfGeneration, when not 0, applies the change only if the resource's
	// configuration generation is still this one (compare-and-swap).
	IfGeneration uint64
	// SetDefaults returns the fields of the given sections that the request
	// leaves out to their defaults.
	SetDefaults bool
}

// Change changes the named resource's configuration: sections are
// configuration sections (see Registry.Sections and EncodeConfig).
func (c *Client) Change(ctx context.Context, name string, opts ChangeOptions, sections List) (Applied, error) {
	body := nameArg(name)
	if opts.IfGeneration != 0 {
		body = append(body, U64(TagIfGeneration, opts.IfGeneration).AsMandatory())
	}
	if opts.SetDefaults {
		body = append(body, Flag(TagSetDefaults, true).AsMandatory())
	}
	r, err := c.Call(ctx, MsgChange, append(body, sections...))
	return applied(r), err
}

// Delete deletes the named resource; ifGeneration works as in Change.
func (c *Client) Delete(ctx context.Context, name string, ifGeneration uint64) error {
	body := nameArg(name)
	if ifGeneration != 0 {
		body = append(body, U64(TagIfGeneration, ifGeneration).AsMandatory())
	}
	_, err := c.Call(ctx, MsgDelete, body)
	return err
}

// Show returns the named resource's configuration and generation.
func (c *Client) Show(ctx context.Context, name string) (config.Resource, uint64, error) {
	r, err := c.Call(ctx, MsgShow, nameArg(name))
	if err != nil {
		return config.Resource{}, 0, err
	}
	p := DecodeConfig(r.Body)
	return p.Apply(config.Resource{}, true), applied(r).Generation, nil
}

// Command sends a runtime command (MsgUp, MsgPrimary, ...) about the named
// resource with extra argument entries.
func (c *Client) Command(ctx context.Context, t MsgType, name string, args ...Entry) (Applied, error) {
	r, err := c.Call(ctx, t, append(nameArg(name), args...))
	return applied(r), err
}

// Subscribe turns the client's connection into an event stream of the
// named resource (all when ""). The client can make no more calls.
func (c *Client) Subscribe(ctx context.Context, name string) (*Subscription, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	seq, err := c.send(ctx, MsgSubscribe, nameArg(name))
	if err != nil {
		return nil, err
	}
	c.closed = true // no more calls on this connection
	return &Subscription{c: c, seq: seq}, nil
}

// Subscription reads events.
type Subscription struct {
	c   *Client
	seq uint32
}

// Next returns the next event. The stream's end comes as an *Error (e.g.
// EVENT_QUEUE_OVERFLOW, INTERRUPTED) or io.EOF.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	c := s.c
	stop := c.watch(ctx)
	defer stop()
	for {
		h, raw, err := ReadFrame(c.c, nil, c.lim)
		if err != nil {
			if err == io.EOF {
				return Event{}, io.EOF
			}
			if cerr := ctxErr(ctx, err); cerr != nil {
				return Event{}, fmt.Errorf("ctlproto: %w", cerr)
			}
			return Event{}, err
		}
		if h.Flags&FlagReply == 0 || h.Seq != s.seq {
			continue
		}
		r, err := c.decodeReply(h, raw)
		if err != nil {
			return Event{}, err
		}
		return DecodeEvent(r.Body)
	}
}

// Close ends the subscription and closes the connection.
func (s *Subscription) Close() error { return s.c.c.Close() }
