"""The production server: gunicorn, one worker process, Flask-SocketIO inside it.

One worker because Socket.IO keeps per-connection state in the process (and the models
would be loaded once per worker). In threading mode the worker is gunicorn's threaded
``gthread`` worker with simple-websocket; each open WebSocket holds one of its threads.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from webapp.config import Settings

log = logging.getLogger("maskwatch.server")

WORKER_CLASSES = {"threading": "gthread", "eventlet": "eventlet", "gevent": "gevent"}


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
            "worker_class": WORKER_CLASSES[s.async_mode],
            "threads": 64 if s.async_mode == "threading" else 1,
            "worker_connections": 1000,
            "timeout": 120,
            "graceful_timeout": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "when_ready": self._announce,
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
        print("\n".join(lines), flush=True)

    @staticmethod
    def _worker_exit(_server, worker) -> None:
        """Graceful stop: write the last buffered history counts."""
        app = getattr(worker, "wsgi", None)
        service = getattr(app, "extensions", {}).get("maskwatch") if app else None
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
