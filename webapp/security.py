"""Access token, login cookie and security headers.

A server bound to anything but loopback can be reached by anyone on the LAN, so it requires
a token (``--token`` / ``MASKWATCH_TOKEN``) unless ``--no-auth`` is given explicitly. The
token is checked on every HTTP route and on Socket.IO connect: people log in once on a small
page that sets an HttpOnly cookie, kiosks can open ``/?token=...`` (the token is moved into
the cookie and removed from the address bar right away).
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections import deque
from typing import Any, Callable
from urllib.parse import urlencode

from flask import Blueprint, Flask, Request, current_app, redirect, render_template, request, url_for

COOKIE = "maskwatch_token"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# No inline script or style; media from the camera (blob:/mediastream:), sockets to ourselves.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

HEADERS = (("Content-Security-Policy", CSP), ("Referrer-Policy", "no-referrer"),
           ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
           ("Permissions-Policy", "camera=(self), microphone=(), geolocation=()"))

bp = Blueprint("auth", __name__)
PUBLIC_ENDPOINTS = {"auth.login", "static"}


def token_ok(req: Request, token: str | None) -> bool:
    """Whether ``req`` carries the token (cookie, or ``Authorization: Bearer``)."""
    if not token:
        return True
    given = req.cookies.get(COOKIE) or ""
    header = req.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        given = header[7:]
    return hmac.compare_digest(given.encode(), token.encode())


def _set_cookie(response, token: str) -> None:
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure,
                        max_age=30 * 24 * 3600)


class LoginThrottle:
    """At most ``attempts`` wrong tokens per client address per ``window`` seconds.

    Hand-written rather than Flask-Limiter: one route, one process, in memory; the library
    would bring its storage layer and console dependencies for these few lines. Only wrong
    tokens count; while an address is held up, every attempt from it gets 429 and Retry-After.
    """

    def __init__(self, attempts: int = 10, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts, self.window, self.clock = attempts, window, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        now = self.clock()
        with self._lock:
            recent = self._failures.get(client)
            while recent and now - recent[0] > self.window:
                recent.popleft()
            if not recent:
                self._failures.pop(client, None)
                return 0.0
            return self.window - (now - recent[0]) if len(recent) >= self.attempts else 0.0

    def failed(self, client: str) -> None:
        with self._lock:
            if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
                self._failures.clear()
            self._failures.setdefault(client, deque()).append(self.clock())


@bp.route("/login", methods=["GET", "POST"])
def login():
    token = current_app.extensions["maskwatch"].settings.token
    throttle: LoginThrottle = current_app.extensions["maskwatch.login_throttle"]
    target = request.values.get("next", "/")
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    if request.method == "POST":
        client = request.remote_addr or "?"
        wait = throttle.retry_after(client)
        if wait:
            return render_template("login.html", error=f"Too many wrong tokens: try again in {wait:.0f} s.",
                                   next=target), 429, {"Retry-After": str(int(wait) + 1)}
        given = request.form.get("token", "")
        if token and hmac.compare_digest(given.encode(), token.encode()):
            response = redirect(target)
            _set_cookie(response, token)
            return response
        throttle.failed(client)
        return render_template("login.html", error="That token is not right.", next=target), 401
    return render_template("login.html", error=None, next=target)


def init_app(app: Flask) -> None:
    """Token check before every request, security headers after."""
    app.register_blueprint(bp)
    app.extensions["maskwatch.login_throttle"] = LoginThrottle()

    @app.before_request
    def require_token():
        token = app.extensions["maskwatch"].settings.token
        if not token or request.endpoint in PUBLIC_ENDPOINTS:
            return None
        query_token = request.args.get("token")
        if query_token is not None and hmac.compare_digest(query_token.encode(), token.encode()):
            args = {k: v for k, v in request.args.items() if k != "token"}
            response = redirect(request.path + ("?" + urlencode(args) if args else ""))
            _set_cookie(response, token)
            return response
        if token_ok(request, token) or request.path.startswith("/socket.io"):
            return None  # Socket.IO checks the token itself on connect
        wants_json = request.accept_mimetypes.best == "application/json"
        if request.path.startswith("/api/") or request.path == "/healthz" or wants_json:
            return {"error": "unauthorized", "message": "log in at /login or send the access token"}, 401
        # A wrong ?token= is dropped from the page to come back to: never echo a secret-like value.
        args = {k: v for k, v in request.args.items() if k != "token"}
        return redirect(url_for("auth.login", next=request.path + ("?" + urlencode(args) if args else "")))

    @app.after_request
    def security_headers(response):
        for name, value in HEADERS:
            response.headers.setdefault(name, value)
        if request.is_secure:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response


class SocketIOGate:
    """WSGI middleware in front of the Socket.IO endpoint, which Engine.IO answers without
    passing through Flask: the same security headers on its responses; when the server has a
    token, a refusal of any new Engine.IO session without it, before a session, a thread or a
    buffer is spent on the client (the Socket.IO connect handler checks again); and at most
    ``max_websockets`` open WebSockets, since each holds a worker thread for its lifetime (the
    rest stay for pages, the API and ``/healthz``; a refused client falls back to polling)."""

    def __init__(self, wsgi_app: Callable, token: str | None, max_websockets: int | None = None,
                 path: str = "/socket.io") -> None:
        self.wsgi_app, self.token, self.max_websockets, self.path = wsgi_app, token, max_websockets, path
        self.open_websockets = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        if not environ.get("PATH_INFO", "").startswith(self.path):
            return self.wsgi_app(environ, start_response)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            present = {name.lower() for name, _ in headers}
            headers = headers + [(n, v) for n, v in HEADERS if n.lower() not in present]
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        def refuse(status: str, error: str, message: str) -> list[bytes]:
            body = json.dumps({"error": error, "message": message}).encode()
            start(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]

        if self.token and "sid=" not in environ.get("QUERY_STRING", "") and not token_ok(Request(environ), self.token):
            return refuse("401 UNAUTHORIZED", "unauthorized", "log in at /login or send the access token")
        if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
            return self.wsgi_app(environ, start)
        with self._lock:
            full = self.max_websockets is not None and self.open_websockets >= self.max_websockets
            if not full:
                self.open_websockets += 1
        if full:
            return refuse("503 SERVICE UNAVAILABLE", "busy",
                          f"this server holds its maximum of {self.max_websockets} WebSockets; use polling")
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            sock.settimeout(None)  # the worker's per-read timeout is for heads and bodies, not for sockets
        try:
            return self.wsgi_app(environ, start)  # returns when the WebSocket closes (threading mode)
        finally:
            with self._lock:
                self.open_websockets -= 1
