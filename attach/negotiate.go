package attach

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Handshake constants (NetworkBlockDevice/nbd doc/proto.md). Those that
// github.com/pojntfx/go-nbd/pkg/protocol defines are taken from there.
const (
	magicNBD      = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	magicIHaveOpt = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicOldstyle = uint64(0x00420281861253)
	magicOptReply = protocol.NEGOTIATION_MAGIC_REPLY

	hflagFixedNewstyle = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	hflagNoZeroes      = uint16(1 << 1)
	cflagFixedNewstyle = uint32(1 << 0)
	cflagNoZeroes      = uint32(1 << 1)

	optExportName = uint32(1)
	optGo         = protocol.NEGOTIATION_ID_OPTION_GO

	repAck      = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repInfo     = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repErrBit   = uint32(1 << 31)
	repErrUnsup = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrUnkn  = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN

	infoExport    = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoBlockSize = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE

	// maxReplyData bounds an option reply's payload: the longest legal
	// one is an error or description message of 4096 bytes.
	maxReplyData = 64 << 10
	// maxExportName is the spec's limit on names.
	maxExportName = 4096
)

// Transmission flags (NBD_FLAG_*) the kernel acts on.
const (
	FlagHasFlags     = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	FlagReadOnly     = uint16(1 << 1)
	FlagSendFlush    = uint16(1 << 2)
	FlagSendFUA      = uint16(1 << 3)
	FlagSendTrim     = uint16(1 << 5)
	FlagCanMultiConn = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
)

// ExportInfo is what a server said about an export during the handshake.
type ExportInfo struct {
	// Name is the export name asked for.
	Name string
	// Size is the export's size in bytes.
	Size int64
	// Flags are the transmission flags (NBD_FLAG_*), as sent.
	Flags uint16
	// MinBlock, PrefBlock and MaxBlock are the block size constraints
	// (NBD_INFO_BLOCK_SIZE); zero when the server sent none.
	MinBlock, PrefBlock, MaxBlock uint32
}

// Dial connects to addr (HOST:PORT, tcp:HOST:PORT or unix:PATH) and
// negotiates export; the connection it returns is in the transmission
// phase. ctx bounds both.
func Dial(ctx context.Context, addr, export string) (net.Conn, ExportInfo, error) {
	network, address := "tcp", strings.TrimPrefix(addr, "tcp:")
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, address = "unix", p
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, ExportInfo{}, err
	}
	info, err := Negotiate(ctx, c, export)
	if err != nil {
		c.Close()
		return nil, ExportInfo{}, fmt.Errorf("%s: %w", addr, err)
	}
	return c, info, nil
}

// Negotiate runs the client side of the fixed newstyle handshake on c and
// selects export with NBD_OPT_GO (or NBD_OPT_EXPORT_NAME if the server
// does not know GO). On success c is in the transmission phase and nothing
// past the handshake has been read from it. ctx's deadline and
// cancellation apply to c while Negotiate runs.
func Negotiate(ctx context.Context, c net.Conn, export string) (ExportInfo, error) {
	if len(export) > maxExportName {
		return ExportInfo{}, fmt.Errorf("export name of %d bytes exceeds %d", len(export), maxExportName)
	}
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			return ExportInfo{}, err
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	info, err := negotiate(c, export)
	if !stop() || ctx.Err() != nil {
		return ExportInfo{}, fmt.Errorf("nbd handshake: %w", ctx.Err())
	}
	if err != nil {
		return ExportInfo{}, fmt.Errorf("nbd handshake: %w", err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return ExportInfo{}, err
	}
	return info, nil
}

// negotiate does the handshake on rw; it is Negotiate without deadlines.
func negotiate(rw io.ReadWriter, export string) (ExportInfo, error) {
	var greet [18]byte
	if _, err := io.ReadFull(rw, greet[:]); err != nil {
		return ExportInfo{}, fmt.Errorf("reading greeting: %w", err)
	}
	if binary.BigEndian.Uint64(greet[0:8]) != magicNBD {
		return ExportInfo{}, fmt.Errorf("%w: greeting %x", ErrNotNBD, greet[0:8])
	}
	switch binary.BigEndian.Uint64(greet[8:16]) {
	case magicIHaveOpt:
	case magicOldstyle:
		return ExportInfo{}, ErrOldstyle
	default:
		return ExportInfo{}, fmt.Errorf("%w: second magic %x", ErrNotNBD, greet[8:16])
	}
	hflags := binary.BigEndian.Uint16(greet[16:18])
	var cflags uint32
	if hflags&hflagFixedNewstyle != 0 {
		cflags |= cflagFixedNewstyle
	}
	noZeroes := hflags&hflagNoZeroes != 0
	if noZeroes {
		cflags |= cflagNoZeroes
	}
	if err := binary.Write(rw, binary.BigEndian, cflags); err != nil {
		return ExportInfo{}, err
	}
	if hflags&hflagFixedNewstyle == 0 {
		// Plain newstyle servers know only NBD_OPT_EXPORT_NAME.
		return exportName(rw, export, noZeroes)
	}
	info, err := optGoExport(rw, export)
	if errors.Is(err, errGoUnsupported) {
		return exportName(rw, export, noZeroes)
	}
	return info, err
}

// errGoUnsupported: the server answered NBD_OPT_GO with ERR_UNSUP.
var errGoUnsupported = errors.New("NBD_OPT_GO unsupported")

// optGoExport sends NBD_OPT_GO for export, asking for block sizes, and
// reads the replies up to NBD_REP_ACK:
//
//	C: IHAVEOPT  7  len  | name length (u32) name  1 (u16)  NBD_INFO_BLOCK_SIZE (u16)
//	S: 0x3e889045565a9  7  type  len  data      ... until type NBD_REP_ACK or an error
func optGoExport(rw io.ReadWriter, export string) (ExportInfo, error) {
	data := make([]byte, 0, 8+len(export))
	data = binary.BigEndian.AppendUint32(data, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 1)
	data = binary.BigEndian.AppendUint16(data, infoBlockSize)
	if err := sendOption(rw, optGo, data); err != nil {
		return ExportInfo{}, err
	}
	info := ExportInfo{Name: export}
	gotExport := false
	for {
		typ, payload, err := readReply(rw, optGo)
		if err != nil {
			return ExportInfo{}, err
		}
		switch {
		case typ == repAck:
			if !gotExport {
				return ExportInfo{}, fmt.Errorf("%w: NBD_REP_ACK without NBD_INFO_EXPORT", ErrProtocol)
			}
			return info, nil
		case typ == repInfo:
			if err := info.decodeInfo(payload); err != nil {
				return ExportInfo{}, err
			}
			if len(payload) >= 2 && binary.BigEndian.Uint16(payload) == infoExport {
				gotExport = true
			}
		case typ == repErrUnsup && !gotExport:
			return ExportInfo{}, errGoUnsupported
		case typ == repErrUnkn:
			return ExportInfo{}, fmt.Errorf("%w %q: %s", ErrUnknownExport, export, printable(payload))
		case typ&repErrBit != 0:
			return ExportInfo{}, fmt.Errorf("%w NBD_OPT_GO for %q: %s (%#x): %s", ErrRefused, export, repErrName(typ), typ, printable(payload))
		default:
			return ExportInfo{}, fmt.Errorf("%w: unexpected reply type %#x to NBD_OPT_GO", ErrProtocol, typ)
		}
	}
}

// decodeInfo applies one NBD_REP_INFO payload; unknown types are ignored,
// as the spec asks.
func (info *ExportInfo) decodeInfo(p []byte) error {
	if len(p) < 2 {
		return fmt.Errorf("%w: NBD_REP_INFO of %d bytes", ErrProtocol, len(p))
	}
	switch binary.BigEndian.Uint16(p) {
	case infoExport:
		if len(p) != 12 {
			return fmt.Errorf("%w: NBD_INFO_EXPORT of %d bytes, want 12", ErrProtocol, len(p))
		}
		return info.setExport(binary.BigEndian.Uint64(p[2:10]), binary.BigEndian.Uint16(p[10:12]))
	case infoBlockSize:
		if len(p) != 14 {
			return fmt.Errorf("%w: NBD_INFO_BLOCK_SIZE of %d bytes, want 14", ErrProtocol, len(p))
		}
		minB, prefB, maxB := binary.BigEndian.Uint32(p[2:6]), binary.BigEndian.Uint32(p[6:10]), binary.BigEndian.Uint32(p[10:14])
		if !pow2(minB) || minB > 64<<10 || !pow2(prefB) || prefB < minB || maxB < prefB {
			return fmt.Errorf("%w: block sizes min %d, preferred %d, max %d", ErrProtocol, minB, prefB, maxB)
		}
		info.MinBlock, info.PrefBlock, info.MaxBlock = minB, prefB, maxB
	}
	return nil
}

func (info *ExportInfo) setExport(size uint64, flags uint16) error {
	if size > 1<<62 {
		return fmt.Errorf("%w: export size %d", ErrProtocol, size)
	}
	info.Size, info.Flags = int64(size), flags
	return nil
}

// exportName selects export with NBD_OPT_EXPORT_NAME:
//
//	C: IHAVEOPT  1  len  name
//	S: size (u64)  flags (u16)  [124 zero bytes unless NO_ZEROES]
//
// A server that does not know the export hangs up.
func exportName(rw io.ReadWriter, export string, noZeroes bool) (ExportInfo, error) {
	if err := sendOption(rw, optExportName, []byte(export)); err != nil {
		return ExportInfo{}, err
	}
	n := 10
	if !noZeroes {
		n += 124
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(rw, b); err != nil {
		if errors.Is(err, io.EOF) {
			return ExportInfo{}, fmt.Errorf("%w %q: server hung up on NBD_OPT_EXPORT_NAME", ErrUnknownExport, export)
		}
		return ExportInfo{}, fmt.Errorf("reading NBD_OPT_EXPORT_NAME reply: %w", err)
	}
	info := ExportInfo{Name: export}
	if err := info.setExport(binary.BigEndian.Uint64(b[0:8]), binary.BigEndian.Uint16(b[8:10])); err != nil {
		return ExportInfo{}, err
	}
	return info, nil
}

func sendOption(w io.Writer, opt uint32, data []byte) error {
	b := make([]byte, 0, 16+len(data))
	b = binary.BigEndian.AppendUint64(b, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	_, err := w.Write(b)
	return err
}

// readReply reads one option reply to opt and returns its type and data.
func readReply(r io.Reader, opt uint32) (uint32, []byte, error) {
	var h [20]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, fmt.Errorf("reading option reply: %w", err)
	}
	if m := binary.BigEndian.Uint64(h[0:8]); m != magicOptReply {
		return 0, nil, fmt.Errorf("%w: option reply magic %#x", ErrProtocol, m)
	}
	if o := binary.BigEndian.Uint32(h[8:12]); o != opt {
		return 0, nil, fmt.Errorf("%w: reply to option %d while waiting for %d", ErrProtocol, o, opt)
	}
	typ, n := binary.BigEndian.Uint32(h[12:16]), binary.BigEndian.Uint32(h[16:20])
	if n > maxReplyData {
		return 0, nil, fmt.Errorf("%w: option reply of %d bytes", ErrProtocol, n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return 0, nil, fmt.Errorf("reading option reply data: %w", err)
	}
	return typ, data, nil
}

func repErrName(t uint32) string {
	switch t &^ repErrBit {
	case 1:
		return "NBD_REP_ERR_UNSUP"
	case 2:
		return "NBD_REP_ERR_POLICY"
	case 3:
		return "NBD_REP_ERR_INVALID"
	case 4:
		return "NBD_REP_ERR_PLATFORM"
	case 5:
		return "NBD_REP_ERR_TLS_REQD"
	case 6:
		return "NBD_REP_ERR_UNKNOWN"
	case 7:
		return "NBD_REP_ERR_SHUTDOWN"
	case 8:
		return "NBD_REP_ERR_BLOCK_SIZE_REQD"
	case 9:
		return "NBD_REP_ERR_TOO_BIG"
	}
	return "NBD_REP_ERR_?"
}

// printable quotes a server's message for an error, bounded.
func printable(p []byte) string {
	if len(p) > 256 {
		p = p[:256]
	}
	return fmt.Sprintf("%q", p)
}

func pow2(v uint32) bool { return v != 0 && v&(v-1) == 0 }
