#!/usr/bin/env python3
"""Run a command on a pseudo-terminal, as at a user's terminal.

usage: terminal.py COMMAND [TIMEOUT]

natscli's `stream view` pages only on a terminal. This runs COMMAND (one bash
command line) on a pseudo-terminal, copies what it prints to standard
output, answers the terminal's cursor-position queries as a terminal does,
and answers each "Next Page?" with n once the prompt waits (the first page
is the test). It exits
with the command's status, or 1 after TIMEOUT seconds (default 30).
"""
import os, pty, select, sys, time

if len(sys.argv) < 2:
    sys.exit(__doc__)
cmd = sys.argv[1]
timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
pid, fd = pty.fork()
if pid == 0:
    os.execvp("bash", ["bash", "-c", cmd])
end = time.monotonic() + timeout
seen = b""
prompted = False  # a "Next Page?" waits for its answer
while True:
    left = end - time.monotonic()
    if left <= 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print(f"\nterminal.py: {cmd!r} ran over {timeout:g}s", file=sys.stderr)
        sys.exit(1)
    r, _, _ = select.select([fd], [], [], min(left, 0.3))
    if not r:
        # The prompt is drawn (its cursor queries answered) once the
        # command waits: then the key goes to the prompt, not to a query.
        if prompted:
            os.write(fd, b"n\r")
            prompted = False
        continue
    try:
        data = os.read(fd, 4096)
    except OSError:  # EIO: the command closed the terminal
        data = b""
    if not data:
        break
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    seen = (seen + data)[-256:]
    if b"\x1b[6n" in seen:  # where is the cursor?
        os.write(fd, b"\x1b[24;80R")  # a 24x80 terminal, cursor at its end
        seen = seen.replace(b"\x1b[6n", b"")
    if b"Next Page?" in seen:
        prompted = True
        seen = b""
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
