"""Per-minute counts in SQLite: people and frame detections, per camera and label.

Counts are buffered in memory and written by ``flush()`` about once a second (WAL mode,
``synchronous=NORMAL``), so a hard kill loses at most the last second or two and a busy
camera costs one small transaction per second instead of one per frame.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    minute TEXT NOT NULL,      -- UTC, 'YYYY-MM-DDTHH:MM'
    camera TEXT NOT NULL,
    label  TEXT NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN ('people', 'detections')),
    n      INTEGER NOT NULL,
    PRIMARY KEY (minute, camera, label, kind)
) WITHOUT ROWID;
"""
COLUMNS = ("start", "camera", "label", "kind", "n")


def _minute(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M")


def parse_since(text: str | None, default: datetime) -> datetime:
    """An ISO-8601 time (naive = UTC); raises ValueError with a readable message."""
    if not text:
        return default
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        when.astimezone(timezone.utc)  # 9999-12-31T23:59:59-23:59 is past the calendar's end in UTC
    except (ValueError, OverflowError):
        raise ValueError(f"'since' must be an ISO-8601 time such as 2026-01-31T08:00:00Z, got {text!r}") from None
    return when


# Spreadsheets run a cell that starts with one of these as a formula (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell a spreadsheet would execute, prefixed with ``'`` so it stays text."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


class History:
    def __init__(self, path: Path, retention_days: int = 90) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_days = retention_days
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._pending: Counter[tuple[str, str, str, str]] = Counter()

    def add(self, kind: str, camera: str, label: str, n: int = 1, ts: float | None = None) -> None:
        ts = datetime.now(timezone.utc).timestamp() if ts is None else ts
        with self._lock:
            self._pending[(_minute(ts), camera, label, kind)] += n

    def flush(self) -> int:
        """Write buffered counts; returns how many rows changed."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
        if not pending:
            return 0
        rows = [(*key, n) for key, n in pending.items()]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO counts (minute, camera, label, kind, n) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (minute, camera, label, kind) DO UPDATE SET n = n + excluded.n", rows)
            self._db.execute("COMMIT")
        return len(rows)

    def prune(self, now: datetime | None = None) -> int:
        now = now or datetime.now(timezone.utc)
        cutoff = (now - timedelta(days=self.retention_days)).strftime("%Y-%m-%dT%H:%M")
        with self._lock:
            return self._db.execute("DELETE FROM counts WHERE minute < ?", (cutoff,)).rowcount

    def query(self, bucket: str = "minute", since: datetime | None = None) -> list[dict]:
        """Rows (start, camera, label, kind, n) summed per bucket ('minute' or 'hour'), oldest first."""
        if bucket not in ("minute", "hour"):
            raise ValueError("bucket must be 'minute' or 'hour'")
        since = since or datetime.now(timezone.utc) - timedelta(days=1)
        start = since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M")
        width = 16 if bucket == "minute" else 13
        self.flush()
        with self._lock:
            cur = self._db.execute(
                f"SELECT substr(minute, 1, {width}) AS b, camera, label, kind, SUM(n) FROM counts "
                "WHERE minute >= ? GROUP BY b, camera, label, kind ORDER BY b, camera, label, kind", (start,))
            rows = cur.fetchall()
        suffix = ":00Z" if bucket == "minute" else ":00:00Z"
        return [dict(zip(COLUMNS, (b + suffix, camera, label, kind, n))) for b, camera, label, kind, n in rows]

    def totals(self, kind: str, since: datetime) -> Counter[str]:
        """Counts per label since ``since`` (e.g. people today), pending ones included."""
        self.flush()
        start = since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M")
        with self._lock:
            rows = self._db.execute("SELECT label, SUM(n) FROM counts WHERE kind = ? AND minute >= ? "
                                    "GROUP BY label", (kind, start)).fetchall()
        return Counter(dict(rows))

    @staticmethod
    def to_csv(rows: list[dict]) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
        return out.getvalue()

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()
