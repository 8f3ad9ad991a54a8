"""Socket.IO input from untrusted clients: bounded binary attachments, and malformed packets
close only the connection that sent them.

python-socketio keeps a half-received binary packet per connection until all its declared
attachments arrive, and an exception while decoding leaves that half packet in place: every
later message of the connection is then taken for an attachment and fails, and the camera
looks connected but is wedged. A frame carries exactly one binary attachment (its image), so
more are refused, and any decoding error disconnects that one client cleanly; its camera
leaves the dashboard at once through the normal disconnect path.

The guard wraps the server's Engine.IO message handler (a private method of python-socketio
5.x, pinned in pyproject.toml; tests/test_hostile.py exercises it on a real server).
"""

from __future__ import annotations

import logging
from typing import Any

import socketio

log = logging.getLogger(__name__)

MAX_ATTACHMENTS = 1  # a frame's image


class FramePacket(socketio.packet.Packet):
    """The default Socket.IO packet, refusing packets that announce more binary attachments
    than a frame has (a client could otherwise make the server hold many 2 MB messages)."""

    def decode(self, encoded_packet: Any) -> int:
        attachments = super().decode(encoded_packet)
        if attachments > MAX_ATTACHMENTS:
            raise ValueError(f"{attachments} binary attachments; at most {MAX_ATTACHMENTS}")
        return attachments


def bound_websocket_messages(server: socketio.Server) -> None:
    """Enforce Engine.IO's message limit while a WebSocket message is being received.

    In threading mode Engine.IO hands WebSockets to simple-websocket without a size limit and
    checks the size only once the whole message is in memory, before authentication too (a
    60 MB message cost the worker ~107 MB). simple-websocket can count while receiving and
    close with 1009 "message too big"; this passes it Engine.IO's own limit.
    """
    eio = server.eio
    websocket_class = eio._async.get("websocket")
    if getattr(websocket_class, "__module__", "") != "engineio.async_drivers._websocket_wsgi":
        return  # eventlet / gevent bring their own WebSocket servers

    class BoundedWebSocket(websocket_class):
        def __init__(self, handler: Any, eio_server: Any, **kwargs: Any) -> None:
            super().__init__(handler, eio_server, max_message_size=eio_server.max_http_buffer_size, **kwargs)

    eio._async = {**eio._async, "websocket": BoundedWebSocket}  # a copy: the driver's dict is shared


def guard_packets(server: socketio.Server) -> None:
    """Disconnect a client whose Socket.IO packet cannot be decoded, forgetting its half packet."""
    handle = server._handle_eio_message

    def guarded(eio_sid: str, data: Any) -> None:
        try:
            handle(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            server._binary_packet.pop(eio_sid, None)
            log.warning("closing a connection that sent a malformed Socket.IO packet: %s", exc)
            server.eio.disconnect(eio_sid)

    server._handle_eio_message = guarded
    server.eio.on("message", guarded)
