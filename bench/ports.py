"""A free port, for the servers, proxies and databases the benchmarks and tests start.

Not ``bind(0)``: the kernel hands that port out from its ephemeral range, the same range every
outgoing connection's local port comes from, so between our check and the server's own bind a
client socket of another test (or of Redis, PostgreSQL, a browser) could take it - a server on
0.0.0.0 then fails with "port already in use". Ports just below the ephemeral range are never
given to outgoing connections, only to programs that ask for them by number.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
SPAN = 12000  # how many ports below the ephemeral range to draw from
_given: set[int] = set()  # handed out by this process: a server may not have bound its port yet


def ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (outgoing connections' local ports)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: the IANA dynamic range
        return 49152


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind (TIME_WAIT is fine)
        try:
            s.bind(("0.0.0.0", port))  # every interface: the servers under test may listen on 0.0.0.0
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on, outside the ephemeral range where one can be found."""
    start = ephemeral_start()
    low = max(1024, start - SPAN)
    rng = random.Random()
    for _ in range(200):
        if low >= start:
            break
        port = rng.randrange(low, start)
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    with socket.socket() as s:  # no room below the ephemeral range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
