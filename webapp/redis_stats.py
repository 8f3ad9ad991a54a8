"""Live counts of every server of a building, shared through Redis (``--redis URL``).

Each server, once a second and from a background thread (never the frame path):

- publishes its cameras' snapshots under ``maskwatch:server:<name>`` with a short expiry, so a
  camera whose server died disappears from every dashboard within ``SERVER_TTL_S`` seconds;
- adds the people it counted since the last sync to ``maskwatch:people:<local date>`` (HINCRBY:
  servers add concurrently without losing a person) and pushes its new alerts onto
  ``maskwatch:alerts`` (the last ``RECENT_ALERTS``, replayed to dashboards that connect later);
- reads back the other servers' cameras, the building's people today and the recent alerts.

``alert`` events reach dashboards on every server through Flask-SocketIO's own Redis message
queue; this module only keeps the state a dashboard needs when it asks. If Redis is down, the
counts and alerts wait in memory (bounded) and the dashboards show this server's cameras and
the last building-wide numbers; one line is logged when the outage starts and one when it ends.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter, deque
from datetime import date
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "maskwatch:"
SERVER_TTL_S = 5  # refreshed every second: a dead server's cameras vanish within this
PEOPLE_TTL_S = 3 * 24 * 3600
RECENT_ALERTS = 20
MAX_WAITING_ALERTS = 1000


class RedisStats:
    def __init__(self, url: str, server: str) -> None:
        import redis  # only with --redis: a single server needs no Redis client

        self._errors = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.server = server
        self._lock = threading.Lock()
        self._people_waiting: Counter[str] = Counter()
        self._alerts_waiting: deque[dict] = deque(maxlen=MAX_WAITING_ALERTS)
        self._people: Counter[str] = Counter()  # building-wide, as last read
        self._remote: list[dict] = []  # other servers' cameras, as last read
        self._alerts: list[dict] = []
        self.down = False

    # -- called by the service (any thread; cheap, in memory) ---------------------------------
    def add_person(self, label: str) -> None:
        with self._lock:
            self._people_waiting[label] += 1

    def add_alert(self, alert: dict) -> None:
        with self._lock:
            self._alerts_waiting.append(alert)

    def people_today(self) -> Counter[str]:
        """The building's people today: what Redis had at the last sync plus what waits to go."""
        with self._lock:
            return self._people + self._people_waiting

    def remote_cameras(self) -> list[dict]:
        with self._lock:
            return list(self._remote)

    def recent_alerts(self) -> list[dict]:
        """The building's last alerts, oldest first."""
        with self._lock:
            return list(self._alerts)

    # -- the sync (one background thread) ---------------------------------------------------
    def sync(self, cameras: list[dict], today: date | None = None) -> bool:
        """Publish this server's cameras and waiting counts, read the building's; True if what
        a dashboard shows changed. Redis errors keep everything waiting for the next call."""
        people_key = f"{PREFIX}people:{(today or date.today()).isoformat()}"
        with self._lock:
            people, self._people_waiting = self._people_waiting, Counter()
            alerts = list(self._alerts_waiting)
            self._alerts_waiting.clear()
        try:
            pipe = self.client.pipeline(transaction=True)
            for label, n in people.items():
                pipe.hincrby(people_key, label, n)
            pipe.expire(people_key, PEOPLE_TTL_S)
            for alert in alerts:
                pipe.rpush(f"{PREFIX}alerts", json.dumps(alert))
            pipe.ltrim(f"{PREFIX}alerts", -RECENT_ALERTS, -1)
            pipe.set(f"{PREFIX}server:{self.server}", json.dumps({"server": self.server, "cameras": cameras}),
                     ex=SERVER_TTL_S)
            pipe.hgetall(people_key)
            pipe.lrange(f"{PREFIX}alerts", 0, -1)
            *_, stored_people, stored_alerts = pipe.execute()
            keys = [k for k in self.client.scan_iter(match=f"{PREFIX}server:*", count=100)
                    if k.decode() != f"{PREFIX}server:{self.server}"]
            servers = self.client.mget(keys) if keys else []
        except self._errors as exc:
            with self._lock:
                self._people_waiting.update(people)
                self._alerts_waiting.extendleft(reversed(alerts))
                changed, self._remote = bool(self._remote), []  # nobody can vouch for them now
            if not self.down:
                self.down = True
                log.warning("Redis is unreachable (%s): this server's counts wait in memory, dashboards show "
                            "its own cameras only until it is back", str(exc).splitlines()[0])
            return changed
        if self.down:
            self.down = False
            log.warning("Redis is back: live counts are shared again")
        remote = [cam for raw in servers if raw for cam in _cameras(raw)]
        with self._lock:
            before = (self._people, self._remote, len(self._alerts))
            self._people = Counter({k.decode(): int(v) for k, v in stored_people.items()})
            self._remote = sorted(remote, key=lambda c: (c.get("server", ""), c.get("name", "")))
            self._alerts = [json.loads(a) for a in stored_alerts]
            return before != (self._people, self._remote, len(self._alerts))


class _QuietOutages(logging.Filter):
    """python-socketio's Redis queue logs every failed publish and every reconnect attempt as an
    error; ``RedisStats`` already says once when Redis goes away and once when it is back, so
    those lines only show with debug logging."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "redis" not in record.getMessage().lower() or log.isEnabledFor(logging.DEBUG)


def message_queue(url: str) -> Any:
    """Flask-SocketIO's Redis message queue (``client_manager``) for ``url``, logging quietly."""
    import socketio

    queue_log = logging.getLogger("maskwatch.message_queue")
    queue_log.addFilter(_QuietOutages())
    return socketio.RedisManager(url, channel="maskwatch", logger=queue_log)


def _cameras(raw: bytes) -> list[dict[str, Any]]:
    """The cameras a server published (an unreadable entry is skipped, not fatal)."""
    try:
        entry = json.loads(raw)
        return [{**cam, "server": entry["server"]} for cam in entry["cameras"]]
    except (ValueError, KeyError, TypeError):
        return []
