"""maskwatch: real-time face-mask compliance monitor.

``create_app`` builds the Flask application with its Socket.IO wiring; the inference core
lives in ``webapp.vision`` and is usable on its own (CLI, evaluation, benchmarks).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

from flask import Flask, request
from flask_socketio import SocketIO
from werkzeug.exceptions import HTTPException

try:  # one version source: pyproject.toml, as installed
    __version__ = version("maskwatch")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Application factory, cheap to call: no model is loaded and no thread starts until the
    first camera or dashboard connects (``maskwatch serve`` starts the service at once).

    ``test_config`` overrides settings (see ``webapp.config.Settings``) and may inject
    ``pipeline_factory`` (``sharing -> Pipeline``, instead of loading ``model/``) and ``clock``.
    """
    from webapp import security, sockets
    from webapp.config import PROJECT_ROOT, RESERVED_THREADS, Settings
    from webapp.events import CameraNamespace, DashboardNamespace
    from webapp.history import History, database_url
    from webapp.redis_stats import message_queue
    from webapp.service import InferenceService
    from webapp.views import bp
    from webapp.vision.pipeline import build_pipeline

    config = dict(test_config or {})
    make_pipeline = config.pop("pipeline_factory", None)
    clock = config.pop("clock", None)
    settings = Settings.load(config)
    app = Flask(__name__, instance_relative_config=True,
                template_folder=str(PROJECT_ROOT / "templates"), static_folder=str(PROJECT_ROOT / "static"))
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    app.config.update(MAX_CONTENT_LENGTH=1024 * 1024)
    app.register_blueprint(bp)
    security.init_app(app)

    @app.errorhandler(HTTPException)
    def json_errors_for_api(exc: HTTPException):
        if request.path.startswith("/api/") or request.path == "/healthz":
            return {"error": exc.name.lower().replace(" ", "_"), "message": exc.description}, exc.code
        return exc

    # Same-origin Socket.IO only (no CORS list); the message limit sits above the frame limit
    # so an oversized frame is answered with frame_error 'too_large', not a dropped connection.
    socketio = SocketIO(app, async_mode=settings.async_mode, cors_allowed_origins=None,
                        max_http_buffer_size=settings.max_frame_bytes * 2 + 64 * 1024,
                        serializer=sockets.FramePacket,
                        # --redis: alerts reach dashboards on every server (Flask-SocketIO's queue)
                        **({"client_manager": message_queue(settings.redis_url)} if settings.redis_url else {}))
    sockets.guard_packets(socketio.server)
    sockets.bound_websocket_messages(socketio.server)
    max_websockets = settings.threads - RESERVED_THREADS if settings.async_mode == "threading" else None
    # outside Socket.IO's own middleware
    app.wsgi_app = security.SocketIOGate(app.wsgi_app, settings.token, max_websockets)
    if settings.proxy_hops:
        from werkzeug.middleware.proxy_fix import ProxyFix
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops)
    history = History(database_url(settings.database_url,
                                   settings.history_path or Path(app.instance_path) / "maskwatch.sqlite3"),
                      settings.retention_days)
    service = InferenceService(socketio, settings,
                               make_pipeline or (lambda sharing: build_pipeline(settings, sharing)), history, clock)
    app.extensions["maskwatch"] = service
    app.extensions["maskwatch.socketio"] = socketio
    socketio.on_namespace(CameraNamespace("/", service))
    socketio.on_namespace(DashboardNamespace("/dashboard", service))
    return app
