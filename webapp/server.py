"""The production server: gunicorn, one worker process, Flask-SocketIO inside it.

One worker because Socket.IO keeps per-connection state in the process (and the models
would be loaded once per worker). In threading mode the worker is gunicorn's threaded worker
with simple-websocket, guarded against idle and slow connections (``webapp.worker``); each open
WebSocket holds one of its threads.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
import threading
from typing import Any

from gunicorn.app.base import BaseApplication

from webapp.config import Settings

log = logging.getLogger("maskwatch.server")

WORKER_CLASSES = {"threading": "webapp.worker.GuardedThreadWorker", "eventlet": "eventlet", "gevent": "gevent"}
# Open connections the worker may hold; each is a file descriptor (the limit is raised to fit).
WORKER_CONNECTIONS = 4000


class MaskwatchServer(BaseApplication):
    def __init__(self, settings: Settings, urls: list[str]) -> None:
        self.settings = settings
        self.urls = urls
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}",
            "workers": 1,
            "worker_class": ("gthread" if s.async_mode == "threading" and not s.guard_connections
                             else WORKER_CLASSES[s.async_mode]),
            "threads": s.threads if s.async_mode == "threading" else 1,
            "worker_connections": allow_open_files(WORKER_CONNECTIONS),
            "timeout": 120,
            # Above the service's own stop (count who is in view, write history): gunicorn
            # SIGKILLs a worker still busy after this many seconds.
            "graceful_timeout": 15,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "when_ready": self._announce,
            "post_worker_init": self._stop_service_first,
            "worker_exit": self._worker_exit,
        }
        if s.certfile:
            options.update(certfile=str(s.certfile), keyfile=str(s.keyfile))
        for key, value in options.items():
            self.cfg.set(key, value)

    def _announce(self, _server) -> None:
        lines = ["maskwatch is running. Open the camera page at:"] + [f"    {u}" for u in self.urls]
        lines.append(f"and the dashboard at {self.urls[0]}dashboard   (Ctrl+C stops)")
        if self.settings.token:
            lines.append("Pages ask for the access token once; kiosks can open URL?token=YOUR-TOKEN.")
        if self.settings.redis_url or self.settings.database_url:
            from webapp.service import server_name
            shared = [what for what, url in (("live counts and alerts through Redis", self.settings.redis_url),
                                             ("history in the --database", self.settings.database_url)) if url]
            lines.append(f"This is server {server_name(self.settings)!r}, sharing {' and '.join(shared)}.")
        print("\n".join(lines), flush=True)

    @staticmethod
    def _service(worker) -> Any:
        app = getattr(worker, "wsgi", None)
        return getattr(app, "extensions", {}).get("maskwatch") if app else None

    @classmethod
    def _stop_service_first(cls, worker) -> None:
        """On SIGTERM, stop the service (count the people in view, write history) at once, in a
        thread of its own, before gunicorn waits for open sockets and may kill the worker."""
        graceful = worker.handle_exit

        def stop_then_close() -> None:
            service = cls._service(worker)
            if service is not None:
                service.stop()
                # Close every Socket.IO connection: gunicorn would otherwise wait for them. Without
                # waiting for each socket's send queue to drain: once the worker is exiting, the
                # thread that drains it may be gone, and the wait then lasted until gunicorn's
                # graceful_timeout killed the worker (1 stop in 4 under test).
                eio = worker.wsgi.extensions["maskwatch.socketio"].server.eio
                for sock in list(eio.sockets.values()):
                    sock.close(wait=False, reason=eio.reason.SERVER_DISCONNECT)
                eio.sockets = {}

        def handle_exit(sig, frame) -> None:
            threading.Thread(target=stop_then_close, name="maskwatch-stop").start()
            graceful(sig, frame)
        worker.handle_exit = handle_exit
        signal.signal(signal.SIGTERM, handle_exit)

    @classmethod
    def _worker_exit(cls, _server, worker) -> None:
        """Last stop: whatever the SIGTERM stop has not written yet (idempotent)."""
        service = cls._service(worker)
        if service is not None:
            service.stop()

    def load(self):
        from webapp import create_app

        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        app = create_app(self._overrides())
        app.extensions["maskwatch"].start()  # load the models now: a broken model folder fails here
        return app

    def _overrides(self) -> dict[str, Any]:
        import dataclasses
        return {f.name: getattr(self.settings, f.name) for f in dataclasses.fields(self.settings)}


def allow_open_files(connections: int) -> int:
    """Raise this process's open-file limit so ``connections`` sockets fit (plus the models,
    logs and database); return how many connections fit if the hard limit is lower."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    fit = connections if soft == resource.RLIM_INFINITY else min(connections, soft - 256)
    if fit < connections:
        log.warning("open-file limit %d: holding at most %d connections (raise ulimit -n)", soft, fit)
    return fit


def check_port_free(host: str, port: int) -> None:
    """Refuse early, in one sentence, when the address is taken: gunicorn would retry five times
    with raw "Connection in use" lines and give up after ~9 s without saying what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ValueError(f"port {port} on {host} is already in use (another maskwatch, or another "
                                 f"program); stop it or choose another port: maskwatch serve --port {port + 1}"
                                 ) from None
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def run_server(settings: Settings, urls: list[str]) -> int:
    check_port_free(settings.host, settings.port)
    if settings.async_mode in ("eventlet", "gevent"):
        try:
            __import__(settings.async_mode)
        except ImportError:
            raise ValueError(f"--async-mode {settings.async_mode} needs: "
                             f"pip install '.[{settings.async_mode}]'") from None
    MaskwatchServer(settings, urls).run()
    return 0
