"""gunicorn's threaded worker, made to hold idle and slow connections cheaply.

The stock ``gthread`` worker hands a connection to one of its threads as soon as a byte
arrives and then reads the request head with a blocking socket, and it never times out a
connection that sends nothing: 1000 silent sockets fill ``worker_connections`` for good, and
64 clients that send a header slowly hold all 64 threads. This worker keeps everything that
has not finished its request head in the event loop:

- the head is read there, without blocking, into a small buffer; only a complete head goes to
  a thread (the parser gets the buffered bytes back, nothing after the head is read);
- a connection that has not sent a complete head ``header_timeout`` seconds after it arrived
  (or after its previous request, on keep-alive) is closed; once in a thread, each read and
  write on the socket gives up after the same time, except on WebSockets (see
  ``webapp.security.SocketIOGate``), which Engine.IO's pings keep honest;
- one client address may hold at most ``max_client_connections`` connections; the next one is
  answered with a one-line 503 and closed at once.

TLS connections cannot be read before their handshake, which runs in a thread: for them only
the per-read timeout applies (put nginx in front on an untrusted network, see the README).
Written here rather than taken from a library because the alternatives change the whole server:
the gevent worker would need the inference threads moved off monkey-patched threading (measured
in ``bench/loadtest.py``), and nginx is an extra process a single-door user should not need.
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
import time
from collections import Counter
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

# More than this many bytes without the end of the head: let gunicorn's parser refuse it (431/400).
MAX_HEAD_BYTES = 64 * 1024
HEAD_END = b"\r\n\r\n"


def client_address(client) -> str:
    """The peer's address, the unit of ``max_client_connections`` (a Unix socket has no tuple)."""
    return client[0] if isinstance(client, tuple) else str(client)


class GuardedConn(TConn):
    """A connection that knows its client address, its unfinished head and when it must finish."""

    def __init__(self, cfg, sock, client, server, on_close) -> None:
        super().__init__(cfg, sock, client, server)
        self.address = client_address(client)
        self.head = bytearray()
        self.deadline: float | None = None
        self._on_close = on_close
        self._closed = False

    def close(self) -> None:
        if not self._closed:  # gunicorn may close a connection twice (TLS EOF path)
            self._closed = True
            self._on_close(self)
        super().close()


class GuardedThreadWorker(ThreadWorker):
    """See the module docstring. ``header_timeout`` and ``max_client_connections`` come from the
    application's ``Settings`` (``webapp.server.MaskwatchServer``); gunicorn's own config has no
    slot for them."""

    def init_process(self) -> None:
        settings = self.app.settings
        self.header_timeout = settings.header_timeout
        self.max_client_connections = settings.max_client_connections
        self._waiting: dict[GuardedConn, None] = {}  # heads still arriving, oldest first
        self._per_address: Counter[str] = Counter()
        self._address_lock = threading.Lock()
        super().init_process()

    # -- accepting -------------------------------------------------------------------------
    def accept(self, server, listener) -> None:
        try:
            sock, client = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        address = client_address(client)
        with self._address_lock:
            over = self.max_client_connections and self._per_address[address] >= self.max_client_connections
            if not over:
                self._per_address[address] += 1
        if over:
            self._refuse(sock, f"too many connections from {address} "
                               f"(at most {self.max_client_connections}); close some and retry")
            return
        self.nr_conns += 1
        self._wait_for_head(GuardedConn(self.cfg, sock, client, server, self._forget))

    @staticmethod
    def _refuse(sock: socket.socket, message: str) -> None:
        body = (message + "\n").encode()
        reply = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 b"Connection: close\r\nRetry-After: 10\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        try:
            sock.setblocking(False)
            sock.send(reply)
        except OSError:
            pass
        sock.close()

    def _forget(self, conn: GuardedConn) -> None:
        with self._address_lock:
            self._per_address[conn.address] -= 1
            if self._per_address[conn.address] <= 0:
                del self._per_address[conn.address]

    # -- reading heads in the event loop ---------------------------------------------------
    def _wait_for_head(self, conn: GuardedConn) -> None:
        conn.deadline = time.monotonic() + self.header_timeout
        with self._lock:
            self._waiting[conn] = None
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))

    def on_client_socket_readable(self, conn: GuardedConn, client) -> None:
        if self.cfg.is_ssl:  # encrypted: the head can only be read after the handshake, in a thread
            with self._lock:
                self._waiting.pop(conn, None)
            return super().on_client_socket_readable(conn, client)
        if conn.initialized and conn not in self._waiting:  # keep-alive: its next request starts now
            with self._lock:
                try:
                    self._keep.remove(conn)
                except ValueError:
                    return  # already timed out
                self._waiting[conn] = None
            conn.deadline = time.monotonic() + self.header_timeout
        try:
            complete = self._read_head(conn)
        except OSError:
            complete = None
        if complete is None:  # the client went away (or reset)
            self._drop(conn)
        elif complete:
            self._hand_over(conn)

    def _read_head(self, conn: GuardedConn) -> bool | None:
        """Move what has arrived of the head into ``conn.head``; True once it is complete,
        None if the peer closed. Peeks first so that no byte after the head is taken."""
        data = conn.sock.recv(8192, socket.MSG_PEEK)
        if not data:
            return None
        seen = bytes(conn.head[-3:]) + data
        end = seen.find(HEAD_END)
        take = len(data) if end < 0 else end + len(HEAD_END) - min(3, len(conn.head))
        conn.head += conn.sock.recv(take)
        return end >= 0 or len(conn.head) >= MAX_HEAD_BYTES

    def _hand_over(self, conn: GuardedConn) -> None:
        with self._lock:
            self._waiting.pop(conn, None)
            self.poller.unregister(conn.sock)
        self.enqueue_req(conn)

    def enqueue_req(self, conn: GuardedConn) -> None:
        conn.init()
        if conn.head:
            conn.parser.unreader.unread(bytes(conn.head))  # the parser reads what we buffered first
            conn.head.clear()
        conn.sock.settimeout(self.header_timeout)  # a stalled body or reader frees its thread
        fs = self.tpool.submit(self.handle, conn)
        self._wrap_future(fs, conn)

    def _drop(self, conn: GuardedConn) -> None:
        with self._lock:
            self._waiting.pop(conn, None)
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
        self.nr_conns -= 1
        conn.close()

    def murder_keepalived(self) -> None:
        """gunicorn's keep-alive sweep, plus the heads that did not arrive in time."""
        super().murder_keepalived()
        now = time.monotonic()
        with self._lock:
            late = []
            for conn in self._waiting:
                if conn.deadline is not None and conn.deadline > now:
                    break  # oldest first: the rest are younger
                late.append(conn)
        for conn in late:
            self._drop(conn)
