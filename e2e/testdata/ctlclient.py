#!/usr/bin/env python3
"""A minimal rbd-nbd control client, written only from docs/ctlproto.md.

Usage: ctlclient.py SOCKET [RESOURCE]

Sends hello, then a status request (for RESOURCE, or for all), and prints
one JSON object: {"daemon": {...hello reply...}, "status": [{...}, ...]}.
On an error reply it prints {"error": {...}} and exits 2.
"""
import json
import socket
import struct
import sys

MAGIC = b"RBNC"
MAJOR, MINOR = 1, 0
HEADER = struct.Struct(">4sBBHHHII")  # magic, major, minor, type, flags, reserved, seq, length
ENTRY = struct.Struct(">HBBI")  # tag, flags, type, length

MSG_HELLO, MSG_STATUS = 1, 2
FLAG_REPLY, FLAG_ERROR = 0x1, 0x2
MANDATORY = 0x1
T_FLAG, T_U8, T_U16, T_U32, T_U64, T_S64, T_STRING, T_BYTES, T_LIST = range(1, 10)

TAG_STATUS, TAG_ERROR, TAG_RES_NAME, TAG_IGNORED = 7, 8, 10, 14
TAG_VERSION, TAG_PROTO_MAJOR, TAG_PROTO_MINOR = 15, 16, 17

# Section 9.9: status fields, tags 100..117.
STATUS_KEYS = ["name", "role", "disk", "connection", "peer-role", "peer-disk", "size",
               "out-of-sync", "resync-done", "resync-total", "resync-rate", "resync-eta",
               "resynced-bytes", "writes-in-flight", "nbd-connections", "current-uuid",
               "peer-node-id", "generation"]
ROLES = ["Unknown", "Secondary", "Primary"]
DISKS = ["Diskless", "Attaching", "Inconsistent", "Outdated", "Consistent", "UpToDate", "DUnknown"]
CONNS = ["StandAlone", "Connecting", "Handshake", "Connected", "SyncSource", "SyncTarget",
         "PausedSyncS", "PausedSyncT", "VerifyS", "VerifyT"]
ENUMS = {"role": ROLES, "peer-role": ROLES, "disk": DISKS, "peer-disk": DISKS, "connection": CONNS}
# Section 10: error fields, tags 120..127.
ERROR_KEYS = {120: "code", 121: "message", 122: "path", 123: "value", 124: "allowed",
              125: "tag", 126: "state", 127: "generation"}


def encode_entry(tag, typ, value, mandatory=False):
    return ENTRY.pack(tag, MANDATORY if mandatory else 0, typ, len(value)) + value


def decode_list(data):
    """Returns [(tag, flags, type, value)], value a list of the same for T_LIST."""
    out, off = [], 0
    while off < len(data):
        if len(data) - off < ENTRY.size:
            raise ValueError("entry header cut short")
        tag, flags, typ, length = ENTRY.unpack_from(data, off)
        off += ENTRY.size
        raw = data[off:off + length]
        if len(raw) != length:
            raise ValueError("entry value cut short")
        off += length
        if typ in (T_FLAG, T_U8, T_U16, T_U32, T_U64):
            value = int.from_bytes(raw, "big")
        elif typ == T_S64:
            value = int.from_bytes(raw, "big", signed=True)
        elif typ == T_STRING:
            value = raw.decode("utf-8")
        elif typ == T_LIST:
            value = decode_list(raw)
        else:
            value = raw  # bytes, or a type this client does not know
        out.append((tag, flags, typ, value))
    return out


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("the daemon closed the connection")
        buf += chunk
    return buf


def call(sock, seq, msg_type, body=b""):
    sock.sendall(HEADER.pack(MAGIC, MAJOR, MINOR, msg_type, 0, 0, seq, len(body)) + body)
    magic, major, minor, typ, flags, _, rseq, length = HEADER.unpack(recv_exact(sock, HEADER.size))
    if magic != MAGIC:
        raise ValueError("bad magic %r" % magic)
    if not flags & FLAG_REPLY or rseq != seq:
        raise ValueError("unexpected frame: type %d flags %d seq %d" % (typ, flags, rseq))
    entries = decode_list(recv_exact(sock, length))
    if flags & FLAG_ERROR:
        err = {}
        for tag, _, _, value in entries:
            if tag == TAG_ERROR:
                for etag, _, _, evalue in value:
                    key = ERROR_KEYS.get(etag)
                    if key == "tag":
                        err.setdefault("tags", []).append(evalue)
                    elif key:
                        err[key] = evalue
        return None, err
    return entries, None


def status_object(section):
    st = {}
    for tag, _, _, value in section:
        if 100 <= tag < 100 + len(STATUS_KEYS):  # unknown tags are skipped
            key = STATUS_KEYS[tag - 100]
            if key in ENUMS and value < len(ENUMS[key]):
                value = ENUMS[key][value]
            elif key == "current-uuid":
                value = "%016X" % value
            elif key == "resync-eta":
                value = value // 1000  # milliseconds on the wire, seconds here
            st[key] = value
    return st


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 1
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(sys.argv[1])
    hello, err = call(sock, 1, MSG_HELLO, encode_entry(TAG_VERSION, T_STRING, b"ctlclient.py"))
    if err:
        print(json.dumps({"error": err}))
        return 2
    daemon = {}
    for tag, _, _, value in hello:
        if tag == TAG_VERSION:
            daemon["version"] = value
        elif tag == TAG_PROTO_MAJOR:
            daemon["proto-major"] = value
        elif tag == TAG_PROTO_MINOR:
            daemon["proto-minor"] = value
    body = b""
    if len(sys.argv) == 3:
        body = encode_entry(TAG_RES_NAME, T_STRING, sys.argv[2].encode(), mandatory=True)
    entries, err = call(sock, 2, MSG_STATUS, body)
    if err:
        print(json.dumps({"daemon": daemon, "error": err}))
        return 2
    statuses = [status_object(value) for tag, _, _, value in entries if tag == TAG_STATUS]
    ignored = [value for tag, _, _, value in entries if tag == TAG_IGNORED]
    print(json.dumps({"daemon": daemon, "status": statuses, "ignored": ignored}))
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
