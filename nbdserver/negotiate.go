package nbdserver

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// negotiation is the option haggling of one connection: from the server's
// greeting to the export a client chose with NBD_OPT_GO or
// NBD_OPT_EXPORT_NAME. Deadlines are the caller's business.
type negotiation struct {
	s        *Server
	c        *conn
	br       *bufio.Reader
	bw       *bufio.Writer
	noZeroes bool
	buf      []byte // option data, reused

	// structured: NBD_OPT_STRUCTURED_REPLY was acknowledged. metaExport
	// names the export the last NBD_OPT_SET_META_CONTEXT named (as Lookup
	// resolved it), metaAlloc whether it selected base:allocation; the
	// selection holds only if the client then chooses that export.
	structured bool
	metaExport string
	metaAlloc  bool

	tls   bool // the connection was upgraded with STARTTLS
	noTLS bool // NOTLS mode: the client is not fixed newstyle
}

// errTooBig marks an option whose data was skipped for being too long.
var errTooBig = errors.New("option data too long")

// run performs the handshake and returns the export the client chose, or
// an error once the connection must end.
func (n *negotiation) run() (*Export, error) {
	if err := binary.Write(n.bw, binary.BigEndian, protocol.NegotiationNewstyleHeader{
		OldstyleMagic:  magicNBD,
		OptionMagic:    magicIHaveOpt,
		HandshakeFlags: flagFixedNewstyle | flagNoZeroes,
	}); err != nil {
		return nil, err
	}
	if err := n.bw.Flush(); err != nil {
		return nil, err
	}
	var cflags uint32
	if err := binary.Read(n.br, binary.BigEndian, &cflags); err != nil {
		return nil, fmt.Errorf("reading client flags: %w", err)
	}
	if cflags&^(clientFlagFixedNewstyle|clientFlagNoZeroes) != 0 {
		return nil, fmt.Errorf("%w: %#x", ErrBadClientFlags, cflags)
	}
	// A client without NBD_FLAG_C_FIXED_NEWSTYLE gets fixed newstyle
	// replies anyway, as the spec allows, but no TLS: the spec puts such
	// a client in NOTLS mode, so a server that requires TLS hangs up.
	n.noZeroes = cflags&clientFlagNoZeroes != 0
	n.noTLS = cflags&clientFlagFixedNewstyle == 0
	if n.noTLS && n.s.RequireTLS {
		return nil, fmt.Errorf("%w: the client is not fixed newstyle, so cannot use TLS", ErrTLSRequired)
	}

	for {
		var h protocol.NegotiationOptionHeader
		if err := binary.Read(n.br, binary.BigEndian, &h); err != nil {
			return nil, fmt.Errorf("reading option header: %w", err)
		}
		if h.OptionMagic != magicIHaveOpt {
			return nil, fmt.Errorf("%w: option magic %#x", ErrBadMagic, h.OptionMagic)
		}
		data, err := n.readData(h.Length)
		tooBig := errors.Is(err, errTooBig)
		if err != nil && !tooBig {
			return nil, err
		}
		// Forced TLS refuses the option whatever its data.
		if refused, err := n.needTLS(h.ID); err != nil {
			return nil, err
		} else if refused {
			continue
		}
		if tooBig {
			if h.ID == optExportName {
				return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME of %d bytes: %w", h.Length, errTooBig)
			}
			if h.ID == optSetMetaContext {
				n.forgetMeta() // a SET replaces the selection even when it fails
			}
			if err := n.reply(h.ID, repErrTooBig, fmt.Sprintf("option data of %d bytes exceeds %d", h.Length, n.s.cfg.MaxOptionLength)); err != nil {
				return nil, err
			}
			continue
		}
		if n.s.shuttingDown() && h.ID != optAbort {
			if h.ID == optExportName {
				// EXPORT_NAME has no error reply: hang up.
				return nil, errors.New("NBD_OPT_EXPORT_NAME while the server shuts down")
			}
			return nil, n.replyErr(h.ID, repErrShutdown, "server shutting down")
		}
		exp, done, err := n.option(h.ID, data)
		if err != nil || done {
			return exp, err
		}
	}
}

// readData reads an option's data into the reused buffer, skipping it
// (errTooBig) when it exceeds MaxOptionLength.
func (n *negotiation) readData(length uint32) ([]byte, error) {
	if length > n.s.cfg.MaxOptionLength {
		if _, err := io.CopyN(io.Discard, n.br, int64(length)); err != nil {
			return nil, fmt.Errorf("skipping option data: %w", err)
		}
		return nil, errTooBig
	}
	if cap(n.buf) < int(length) {
		n.buf = make([]byte, length)
	}
	data := n.buf[:length]
	if _, err := io.ReadFull(n.br, data); err != nil {
		return nil, fmt.Errorf("reading option data: %w", err)
	}
	return data, nil
}

// option handles one option. done reports that negotiation ended with exp
// chosen.
func (n *negotiation) option(id uint32, data []byte) (exp *Export, done bool, err error) {
	switch id {
	case optExportName:
		exp, err := n.exportName(data)
		return exp, err == nil, err
	case optAbort:
		// Data, which a client should not send, is ignored: the spec
		// asks the server to acknowledge the abort whatever it carries.
		if err := n.reply(id, repAck, ""); err != nil {
			return nil, false, err
		}
		return nil, false, ErrAborted
	case optList:
		return nil, false, n.list(data)
	case optInfo, optGo:
		return n.infoGo(id, data)
	case optStartTLS:
		return nil, false, n.startTLS(data)
	case optStructuredReply:
		if len(data) != 0 {
			return nil, false, n.reply(id, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY carries no data")
		}
		n.structured = true
		return nil, false, n.reply(id, repAck, "")
	case optListMetaContext, optSetMetaContext:
		return nil, false, n.metaContext(id, data)
	default:
		return nil, false, n.reply(id, repErrUnsup, fmt.Sprintf("option %d is not supported", id))
	}
}

// lookupErrReply is the option reply for a failed lookup of an export:
// refused (ErrExportRefused) or unknown.
func lookupErrReply(err error) uint32 {
	if errors.Is(err, ErrExportRefused) {
		return repErrPolicy
	}
	return repErrUnknown
}

func (n *negotiation) exportName(data []byte) (*Export, error) {
	if len(data) > maxStringLen {
		return nil, fmt.Errorf("%w: export name of %d bytes", ErrUnknownExport, len(data))
	}
	name := string(data)
	exp, ticket, err := n.s.lookup(name)
	if err == nil {
		err = n.s.open(n.c, exp, ticket)
	}
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrUnknownExport, name, err)
	}
	var b [8 + 2 + 124]byte
	binary.BigEndian.PutUint64(b[0:8], uint64(exp.Backend.Size()))
	binary.BigEndian.PutUint16(b[8:10], exp.TransmissionFlags())
	out := b[:]
	if n.noZeroes {
		out = b[:10]
	}
	if _, err := n.bw.Write(out); err != nil {
		return nil, err
	}
	if err := n.bw.Flush(); err != nil {
		return nil, err
	}
	return exp, nil
}

func (n *negotiation) list(data []byte) error {
	if len(data) != 0 {
		return n.reply(optList, repErrInvalid, "NBD_OPT_LIST carries no data")
	}
	if n.s.List == nil {
		return n.reply(optList, repErrPolicy, "listing exports is disabled")
	}
	for _, e := range n.s.List() {
		if e == nil {
			continue
		}
		b := make([]byte, 0, 4+len(e.Name)+len(e.Description))
		b = binary.BigEndian.AppendUint32(b, uint32(len(e.Name)))
		b = append(b, e.Name...)
		b = append(b, e.Description...)
		if err := n.send(optList, repServer, b); err != nil {
			return err
		}
	}
	return n.reply(optList, repAck, "")
}

// needTLS refuses option id with NBD_REP_ERR_TLS_REQD when the server
// requires TLS and the connection has not upgraded yet (refused), or
// ends the connection for NBD_OPT_EXPORT_NAME, which cannot carry an
// error. STARTTLS and ABORT always pass.
func (n *negotiation) needTLS(id uint32) (refused bool, err error) {
	if !n.s.RequireTLS || n.tls || id == optStartTLS || id == optAbort {
		return false, nil
	}
	if id == optExportName {
		return true, fmt.Errorf("%w: NBD_OPT_EXPORT_NAME before STARTTLS", ErrTLSRequired)
	}
	return true, n.reply(id, repErrTLSReqd, "this server requires TLS: NBD_OPT_STARTTLS first")
}

// startTLS answers NBD_OPT_STARTTLS: NBD_REP_ACK, then the TLS handshake
// as the server, after which negotiation goes on inside TLS. A server
// without TLS answers NBD_REP_ERR_UNSUP, as the spec allows in its NOTLS
// mode (ERR_POLICY would claim we chose not to). A failed handshake ends
// the connection: the stream is in no known state.
func (n *negotiation) startTLS(data []byte) error {
	switch {
	case n.s.TLS == nil || n.noTLS:
		return n.reply(optStartTLS, repErrUnsup, "TLS is not supported by this server (or for clients that are not fixed newstyle)")
	case len(data) != 0:
		return n.reply(optStartTLS, repErrInvalid, "NBD_OPT_STARTTLS carries no data")
	case n.tls:
		return n.reply(optStartTLS, repErrInvalid, "TLS is already in use")
	}
	if err := n.reply(optStartTLS, repAck, ""); err != nil {
		return err
	}
	if n.br.Buffered() > 0 {
		// The client must wait for our ACK before its ClientHello; bytes
		// read ahead would be lost to the handshake.
		return fmt.Errorf("%w: data after NBD_OPT_STARTTLS before the TLS handshake", ErrBadTLS)
	}
	tc := tls.Server(n.c.raw, n.s.TLS)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadTLS, err)
	}
	n.c.upgrade(tc)
	n.tls = true
	// What was negotiated in the clear is forgotten: a man in the middle
	// could have chosen it.
	n.structured = false
	n.forgetMeta()
	return nil
}

// forgetMeta drops the meta context selection.
func (n *negotiation) forgetMeta() { n.metaExport, n.metaAlloc = "", false }

// metaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT:
//
//	C: 32 bits name length, name, 32 bits query count, per query 32 bits
//	   length and the query
//	S: NBD_REP_META_CONTEXT per matching context, NBD_REP_ACK
//
// The only context is base:allocation. LIST matches it with no query, the
// query "base:" or its full name; SET only with its full name, and a SET
// replaces the previous selection even when nothing matches.
func (n *negotiation) metaContext(id uint32, data []byte) error {
	set := id == optSetMetaContext
	if set {
		n.forgetMeta() // a SET replaces the selection even when it fails
	}
	if set && !n.structured {
		return n.reply(id, repErrInvalid, "NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first")
	}
	name, queries, msg := parseMetaQuery(data)
	if msg != "" {
		return n.reply(id, repErrInvalid, msg)
	}
	exp, _, err := n.s.lookup(name)
	if err != nil {
		return n.reply(id, repErrUnknown, truncate(err.Error()))
	}
	match := len(queries) == 0 && !set
	for _, q := range queries {
		match = match || q == contextAllocation || (!set && q == "base:")
	}
	if set {
		n.metaExport, n.metaAlloc = exp.Name, match
	}
	if match {
		ctxID := uint32(0) // LIST replies carry no id
		if set {
			ctxID = contextAllocationID
		}
		if err := n.send(id, repMetaContext, binary.BigEndian.AppendUint32(nil, ctxID), []byte(contextAllocation)); err != nil {
			return err
		}
	}
	return n.reply(id, repAck, "")
}

// parseMetaQuery decodes the data of a meta context option; msg says what
// is malformed.
func parseMetaQuery(data []byte) (name string, queries []string, msg string) {
	str := func(what string) (string, bool) {
		if len(data) < 4 {
			msg = what + " length missing"
			return "", false
		}
		l := binary.BigEndian.Uint32(data[0:4])
		if uint64(l) > uint64(len(data)-4) {
			msg = what + " length exceeds option data"
			return "", false
		}
		if l > maxStringLen {
			msg = what + " longer than 4096 bytes"
			return "", false
		}
		v := string(data[4 : 4+l])
		data = data[4+l:]
		return v, true
	}
	var ok bool
	if name, ok = str("export name"); !ok {
		return "", nil, msg
	}
	if len(data) < 4 {
		return "", nil, "query count missing"
	}
	count := binary.BigEndian.Uint32(data[0:4])
	data = data[4:]
	if uint64(count) > uint64(len(data)/4) {
		return "", nil, "query count exceeds option data"
	}
	queries = make([]string, 0, count)
	for range count {
		q, ok := str("query")
		if !ok {
			return "", nil, msg
		}
		queries = append(queries, q)
	}
	if len(data) != 0 {
		return "", nil, "option data longer than its queries"
	}
	return name, queries, ""
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO:
//
//	C: 32 bits name length, name, 16 bits request count, 16 bits per request
//	S: NBD_REP_INFO (NBD_INFO_EXPORT and what was asked for), NBD_REP_ACK
func (n *negotiation) infoGo(id uint32, data []byte) (*Export, bool, error) {
	if len(data) < 6 {
		return nil, false, n.reply(id, repErrInvalid, "option data shorter than 6 bytes")
	}
	nameLen := binary.BigEndian.Uint32(data[0:4])
	if uint64(nameLen) > uint64(len(data)-6) {
		return nil, false, n.reply(id, repErrInvalid, "export name length exceeds option data")
	}
	if nameLen > maxStringLen {
		return nil, false, n.reply(id, repErrInvalid, "export name longer than 4096 bytes")
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nreq := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		return nil, false, n.reply(id, repErrInvalid, "information request count does not match option length")
	}
	var wantName, wantDesc, wantBlock bool
	for i := 0; i < nreq; i++ {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		case infoBlockSize:
			wantBlock = true
		}
	}

	exp, ticket, err := n.s.lookup(name)
	if err != nil {
		return nil, false, n.reply(id, lookupErrReply(err), truncate(err.Error()))
	}
	flags := exp.TransmissionFlags()
	if err := n.sendInfo(id, protocol.NegotiationReplyInfo{
		Type: infoExport, Size: uint64(exp.Backend.Size()), TransmissionFlags: flags,
	}); err != nil {
		return nil, false, err
	}
	if wantName {
		if err := n.send(id, repInfo, binary.BigEndian.AppendUint16(nil, infoName), []byte(exp.Name)); err != nil {
			return nil, false, err
		}
	}
	if wantDesc && exp.Description != "" {
		if err := n.send(id, repInfo, binary.BigEndian.AppendUint16(nil, infoDescription), []byte(exp.Description)); err != nil {
			return nil, false, err
		}
	}
	minB, prefB, maxB := exp.blockSizes(&n.s.cfg)
	// Block sizes are sent when asked for, and also unasked when the
	// export needs alignment, which the spec allows.
	if wantBlock || minB > 1 {
		if err := n.sendInfo(id, protocol.NegotiationReplyBlockSize{
			Type: infoBlockSize, MinimumBlockSize: minB, PreferredBlockSize: prefB, MaximumBlockSize: maxB,
		}); err != nil {
			return nil, false, err
		}
	}
	if id == optInfo {
		return nil, false, n.reply(id, repAck, "")
	}
	if err := n.s.open(n.c, exp, ticket); err != nil {
		return nil, false, n.reply(id, lookupErrReply(err), truncate(err.Error()))
	}
	if err := n.reply(id, repAck, ""); err != nil {
		return nil, false, err
	}
	return exp, true, nil
}

// sendInfo sends an NBD_REP_INFO whose payload is the fixed-size struct v.
func (n *negotiation) sendInfo(id uint32, v any) error {
	return n.send(id, repInfo, encode(v))
}

func encode(v any) []byte {
	b, err := binary.Append(nil, binary.BigEndian, v)
	if err != nil {
		panic(err) // only fixed-size protocol structs are encoded
	}
	return b
}

// reply sends a reply whose payload is msg (an error message, or nothing).
func (n *negotiation) reply(id, typ uint32, msg string) error {
	if err := n.send(id, typ, []byte(msg)); err != nil {
		return err
	}
	return nil
}

// replyErr sends an error reply and returns an error ending negotiation.
func (n *negotiation) replyErr(id, typ uint32, msg string) error {
	if err := n.reply(id, typ, msg); err != nil {
		return err
	}
	return fmt.Errorf("option %d refused: %s", id, msg)
}

// send writes one option reply made of the concatenated parts and flushes.
func (n *negotiation) send(id, typ uint32, parts ...[]byte) error {
	total := 0
	for _, p := range parts {
		total += len(p)
	}
	if err := binary.Write(n.bw, binary.BigEndian, protocol.NegotiationReplyHeader{
		ReplyMagic: magicOptReply, ID: id, Type: typ, Length: uint32(total),
	}); err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := n.bw.Write(p); err != nil {
			return err
		}
	}
	return n.bw.Flush()
}

// truncate bounds an error message to the spec's string limit.
func truncate(s string) string {
	if len(s) > maxStringLen {
		return s[:maxStringLen]
	}
	return s
}
