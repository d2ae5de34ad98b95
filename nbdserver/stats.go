package nbdserver

import "sync/atomic"

// Stats counts what a server's clients asked for since the server started,
// over every connection, closed ones included. Requests refused without
// reaching the backend (out of range, read-only) count in their kind and
// in Errors.
type Stats struct {
	// Connections counts the connections accepted; Open those open now
	// (negotiating or transmitting).
	Connections, Open uint64
	// Refused counts the connections closed unserved because Serve held
	// Config.MaxConnections already (not in Connections).
	Refused uint64
	// Reads and ReadBytes count READs and the bytes they asked for.
	Reads, ReadBytes uint64
	// Writes and WrittenBytes count WRITEs and their payload.
	Writes, WrittenBytes uint64
	// Trims, Zeroes and their bytes count TRIM and WRITE_ZEROES.
	Trims, TrimmedBytes, Zeroes, ZeroedBytes uint64
	// Flushes counts FLUSHes.
	Flushes uint64
	// Errors counts requests answered with an error.
	Errors uint64
}

// connStats is one connection's share of Stats. Each connection counts on
// its own, so that connections on different CPUs never share a counter's
// cache line; Server.Stats adds them up.
type connStats struct {
	reads, readBytes     atomic.Uint64
	writes, writtenBytes atomic.Uint64
	trims, trimmedBytes  atomic.Uint64
	zeroes, zeroedBytes  atomic.Uint64
	flushes, errors      atomic.Uint64
}

func (c *connStats) count(r *Request, errno uint32) {
	n := uint64(r.Length)
	switch r.Type {
	case CmdRead:
		c.reads.Add(1)
		c.readBytes.Add(n)
	case CmdWrite:
		c.writes.Add(1)
		c.writtenBytes.Add(n)
	case CmdTrim:
		c.trims.Add(1)
		c.trimmedBytes.Add(n)
	case CmdWriteZeroes:
		c.zeroes.Add(1)
		c.zeroedBytes.Add(n)
	case CmdFlush:
		c.flushes.Add(1)
	}
	if errno != 0 {
		c.errors.Add(1)
	}
}

func (s *Stats) add(c *connStats) {
	s.Reads += c.reads.Load()
	s.ReadBytes += c.readBytes.Load()
	s.Writes += c.writes.Load()
	s.WrittenBytes += c.writtenBytes.Load()
	s.Trims += c.trims.Load()
	s.TrimmedBytes += c.trimmedBytes.Load()
	s.Zeroes += c.zeroes.Load()
	s.ZeroedBytes += c.zeroedBytes.Load()
	s.Flushes += c.flushes.Load()
	s.Errors += c.errors.Load()
}

// Refused returns Stats().Refused without adding up the connections'
// counters.
func (s *Server) Refused() uint64 {
	if s.init() != nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

// Stats returns the counters of every connection so far.
func (s *Server) Stats() Stats {
	if s.init() != nil {
		return Stats{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.closedStats
	st.Connections = s.accepted
	st.Open = uint64(len(s.conns))
	st.Refused = s.refused
	for c := range s.conns {
		st.add(&c.stats)
	}
	return st
}
