#!/usr/bin/env python3
"""Print N distinct free loopback TCP ports (N is the one argument).

All are held until the last is found, so they differ, and they lie below
Linux's ephemeral range (32768-60999), where any outgoing connection may
take one as its source port before a server listens on it. Used by
demo.sh and bench.sh.
"""
import random
import socket
import sys

held = []
while len(held) < int(sys.argv[1]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", random.randrange(10000, 32768)))
    except OSError:
        s.close()
        continue
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
