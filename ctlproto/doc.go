// Package ctlproto is the control protocol between the rbd-nbd tools and the
// daemon: versioned tag-list messages over a Unix socket. It has the codec
// (frames and tag lists, with limits), the registry that declares every tag,
// message type and error code, typed helpers between tag lists and Go
// values (config.Resource, resource.Status, events, errors), a server that
// dispatches requests to a Handler with peer-credential access control and
// bounded event streams, and a client.
//
// docs/ctlproto.md is the full specification, written so that a client can
// be implemented from it alone. In short:
//
// # Frame
//
// Every message is one frame: a 20-byte header and a body. All integers are
// big-endian.
//
//	 0               1               2               3
//	 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
//	+---------------------------------------------------------------+
//	|                 magic 0x52424E43 ("RBNC")                      |  0
//	+---------------+---------------+-------------------------------+
//	| major (1)     | minor (0)     |         message type          |  4
//	+---------------+---------------+-------------------------------+
//	|        flags (reply, error)   |        reserved (0)           |  8
//	+---------------+---------------+-------------------------------+
//	|                       sequence number                         | 12
//	+---------------------------------------------------------------+
//	|                  body length (bytes, <= 1 MiB)                | 16
//	+---------------------------------------------------------------+
//	|                 body: a tag list (entries) ...                | 20
//
// # Entry
//
// A tag list is a sequence of entries, nothing before, between or after
// them. An entry is an 8-byte header and its value:
//
//	+-------------------------------+---------------+---------------+
//	|          tag number           | flags         | type          |  0
//	+-------------------------------+---------------+---------------+
//	|                     value length (bytes)                      |  4
//	+---------------------------------------------------------------+
//	|                     value ...                                 |  8
//
// The mandatory bit is bit 0 of the flags byte, apart from the number and
// the type. Types: 1 flag (1 byte, 0 or 1), 2 u8, 3 u16, 4 u32, 5 u64,
// 6 s64, 7 string (UTF-8), 8 bytes, 9 list (the value is a nested tag list:
// a section). Durations are u64 milliseconds.
//
// # Compatibility
//
// Tag numbers, message types and error codes are append-only (golden lists
// in testdata guard them). A receiver skips an optional entry whose tag it
// does not know and lists it in the reply (ignored-tag); an unknown mandatory
// entry makes it refuse the whole request with UNKNOWN_MANDATORY_TAG and the
// tag numbers. A frame with another major version is refused with
// PROTOCOL_VERSION_UNSUPPORTED.
//
// # Extending
//
// To add a tag: append it to defaultTags (tags.go) with the next free
// number, its section, type, unit, mandatory bit and CLI option, and Since
// set to the new protocol minor (raise ProtoMinor); record it with
// "go test ./ctlproto -run TestRegistryGolden -update" and add its row to
// docs/ctlproto.md (TestDocsListTheRegistry checks). A configuration field
// also needs a binding in config.go (wrapped in omitWhenZero, so that
// tools leave it out while unset and still drive older daemons; its zero
// value must be its default); a status field a StatusField. To add a
// request type: append a MsgDef to defaultMsgs with the top-level tags it
// accepts and its access level, and answer it in the daemon. Never renumber
// or delete: retire.
package ctlproto
