"""Which process listens on a TCP port (for starting a server on a port picked free).

A port found free is free only until a process binds it: a server started on it can lose
it to another process meanwhile, fail to bind, and the other one answers its readiness
check (``/health``, an RPC call) as if it were the server. :func:`listens` tells the two
apart, from Linux's ``/proc``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

__all__ = ["listens"]

_LISTEN = "0A"  # the TCP state LISTEN in /proc/net/tcp


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the TCP socket listening on ``port`` (True where
    /proc cannot tell, as off Linux: the readiness check alone has to do there)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return True
    owned: set[str] = set()
    for fd in fds:
        with contextlib.suppress(OSError):  # an fd closed meanwhile
            owned.add(str(fd.readlink()))
    listening: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:  # sl local_address rem_address st ... inode
            fields = row.split()
            if len(fields) > 9 and fields[3] == _LISTEN and \
                    int(fields[1].rsplit(":", 1)[1], 16) == port:
                listening.add(f"socket:[{fields[9]}]")
    return not readable or bool(owned & listening)
