"""Socket.IO namespaces, as in Flask-SocketIO's examples: they authenticate, hand events to the
inference service (``webapp/service.py``) and answer; nothing else.

Camera pages connect to ``/`` and send ``frame`` events; the service answers with
``detections`` (or ``frame_error``) and ``alert``. Dashboards connect to ``/dashboard`` and get
``counts`` on connect (and the alerts raised before they opened), then whenever it changes.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import request
from flask_socketio import ConnectionRefusedError, Namespace

from webapp.security import token_ok
from webapp.service import InferenceService

log = logging.getLogger(__name__)


class ServiceNamespace(Namespace):
    """A namespace bound to the inference service; connecting needs the access token."""

    def __init__(self, namespace: str, service: InferenceService) -> None:
        super().__init__(namespace)
        self.service = service

    def trigger_event(self, event: str, *args: Any) -> Any:
        """Run a handler - but never for a client that *sends* an event named ``connect`` or
        ``disconnect``: the real ones arrive while the connection is still pending or already
        leaving, a forged one from a connected client (it would rename, hide or recount a camera)."""
        if event in ("connect", "disconnect") and args and self.server.manager.is_connected(args[0], self.namespace):
            log.warning("ignored a %r event sent by client %s", event, args[0])
            return None
        return super().trigger_event(event, *args)

    def reply(self, event: str, data: Any) -> None:
        """Send to the client of this event only, never through the message queue of
        ``--redis``: the answer must not wait on Redis (or be lost when it is down)."""
        self.socketio.emit(event, data, to=request.sid, namespace=self.namespace, ignore_queue=True)

    def check_token(self) -> None:
        if not token_ok(request, self.service.settings.token):
            raise ConnectionRefusedError("unauthorized")


class CameraNamespace(ServiceNamespace):
    """Camera pages: send ``frame``, receive ``detections`` / ``frame_error`` / ``alert``."""

    def on_connect(self, auth: Any = None) -> None:
        self.check_token()
        name = auth.get("camera") if isinstance(auth, dict) and isinstance(auth.get("camera"), str) else None
        session = self.service.connect(request.sid, name)
        log.info("camera connected: %s (%s)", session.name, request.sid)

    def on_disconnect(self, reason: Any = None) -> None:
        self.service.disconnect(request.sid)
        log.info("camera disconnected: %s", request.sid)

    def on_frame(self, data: Any = None) -> None:
        error = self.service.submit(request.sid, data)
        if error is not None:
            self.reply("frame_error", error)


class DashboardNamespace(ServiceNamespace):
    """Dashboards: receive ``counts`` and ``alert``."""

    def on_connect(self, auth: Any = None) -> None:
        self.check_token()
        self.service.start()
        self.reply("counts", self.service.snapshot())
        for alert in self.service.recent_alerts():  # raised before this dashboard opened
            self.reply("alert", alert)
