#!/usr/bin/env python3
"""Ports on 127.0.0.1, checked the way a Go server will bind them.

usage: ports.py free PORT...   exit 1 naming the first port taken
       ports.py any            print a free port

Go's net.Listen sets SO_REUSEADDR, so a port whose only remnants are
connections in TIME_WAIT (a server that stopped a moment ago) is free to it;
a bare bind() would call it taken for a minute after. The check does as Go
does, so that it refuses only what Go would.
"""
import socket, sys

def bind(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    return s

if len(sys.argv) >= 2 and sys.argv[1] == "any":
    print(bind(0).getsockname()[1])
elif len(sys.argv) >= 3 and sys.argv[1] == "free":
    for p in sys.argv[2:]:
        try:
            bind(int(p)).close()
        except OSError as e:
            print(f"port {p} is taken: {e.strerror}", file=sys.stderr)
            sys.exit(1)
else:
    sys.exit(__doc__)
