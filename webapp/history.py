"""Per-minute counts: people and frame detections, per camera and label, through SQLAlchemy Core.

One table ``counts`` keyed by (minute, camera, label, kind). By default it lives in a SQLite
file (WAL mode, ``synchronous=NORMAL``); with ``--database postgresql://...`` several servers
share one PostgreSQL table. Counts are buffered in memory and written by ``flush()`` about once
a second as an upsert that *adds* to the stored count, so concurrent writers never lose or
double a minute, a hard kill loses at most the last second or two, and a busy camera costs one
small transaction per second instead of one per frame.

The frame path only adds to the in-memory buffer (its own lock, never held while writing). When
the database is unreachable, ``flush`` keeps the counts buffered (bounded: the oldest minutes go
first past ``MAX_BUFFERED_ROWS``), logs one line when the outage starts and one when it ends,
and writes everything that was kept once the database answers again.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

# The schema this code writes; ``upgrade`` brings an older database here.
SCHEMA_VERSION = 1
# PostgreSQL advisory lock held while the schema is created or upgraded (any fixed number: "mask").
SCHEMA_LOCK_ID = 0x6D61736B
# Buffered (minute, camera, label, kind) rows kept while the database is down: about a day of
# four cameras (1440 minutes x 4 cameras x 3 labels x 2 kinds ~ 35k).
MAX_BUFFERED_ROWS = 50_000

metadata = MetaData()
counts = Table(
    "counts", metadata,
    Column("minute", String(16), nullable=False),  # UTC, 'YYYY-MM-DDTHH:MM'
    Column("camera", String(200), nullable=False),
    Column("label", String(32), nullable=False),
    Column("kind", String(16), nullable=False),  # 'people' | 'detections'
    Column("n", Integer, nullable=False),
    PrimaryKeyConstraint("minute", "camera", "label", "kind"),
    sqlite_with_rowid=False,
)
schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))
KEY = ("minute", "camera", "label", "kind")

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


class HistoryUnavailable(RuntimeError):
    """The history database cannot be read right now (the API answers 503)."""


def database_url(url: str | None, sqlite_path: Path) -> URL:
    """The SQLAlchemy URL to use: ``url`` as given (``postgresql://`` means psycopg 3, the driver
    we install), or the SQLite file at ``sqlite_path``."""
    if not url:
        return URL.create("sqlite", database=str(sqlite_path))
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _upgrade(conn) -> None:
    """Create or upgrade the schema to ``SCHEMA_VERSION``, recording it.

    Version 0 is a database made before versions were recorded (the SQLite file of earlier
    releases: same ``counts`` table); it only gains the version row. On PostgreSQL, servers
    that start together take turns (a transaction-scoped advisory lock): otherwise two of them
    both see no table, both create it, and all but one fail.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_ID)))
    metadata.create_all(conn, checkfirst=True)
    found = conn.execute(select(schema_version.c.version)).scalar()
    if found is None:
        conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
    elif found > SCHEMA_VERSION:
        raise RuntimeError(f"the history database has schema version {found}, newer than this maskwatch "
                           f"({SCHEMA_VERSION}): upgrade maskwatch")
    elif found < SCHEMA_VERSION:  # later versions add their steps here, in order
        conn.execute(schema_version.update().values(version=SCHEMA_VERSION))


def _upsert(conn, rows: list[dict]) -> None:
    """Insert rows, adding ``n`` to a row that already exists (both dialects speak ON CONFLICT)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(counts)
    stmt = stmt.on_conflict_do_update(index_elements=list(KEY), set_={"n": counts.c.n + stmt.excluded.n})
    conn.execute(stmt, sorted(rows, key=lambda r: tuple(r[k] for k in KEY)))  # one order: no deadlocks


class History:
    def __init__(self, url: URL | str, retention_days: int = 90) -> None:
        self.url = make_url(url) if isinstance(url, str) else url
        self.retention_days = retention_days
        self.engine = self._engine(self.url)
        self._pending: Counter[tuple[str, str, str, str]] = Counter()
        self._buffer_lock = threading.Lock()  # the frame path takes only this one
        self._write_lock = threading.Lock()
        self._schema_ready = False
        self._down = False
        self._dropped = 0
        try:
            self._ensure_schema()
        except SQLAlchemyError as exc:  # e.g. PostgreSQL not up yet: retried on each flush
            self._went_down(exc)

    @property
    def where(self) -> str:
        """The database, for messages: a file name or host/database, never a password."""
        if self.url.get_backend_name() == "sqlite":
            return Path(self.url.database or "").name
        return f"{self.url.host}:{self.url.port or 5432}/{self.url.database}"

    @staticmethod
    def _engine(url: URL) -> Engine:
        if url.get_backend_name() == "sqlite":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url)

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn, _record) -> None:
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
                dbapi_conn.execute("PRAGMA synchronous=NORMAL")
            return engine
        # A dead server must fail fast (the flush loop retries every second), and a connection
        # broken by a restart is replaced instead of failing the next flush.
        return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2,
                             connect_args={"connect_timeout": 3})

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            with self._write_lock, self.engine.begin() as conn:
                _upgrade(conn)
            self._schema_ready = True

    def add(self, kind: str, camera: str, label: str, n: int = 1, ts: float | None = None) -> None:
        ts = datetime.now(timezone.utc).timestamp() if ts is None else ts
        with self._buffer_lock:
            self._pending[(_minute(ts), camera, label, kind)] += n

    def flush(self) -> int:
        """Write buffered counts; returns how many rows were written (0 while the database is down,
        the counts then stay buffered)."""
        with self._buffer_lock:
            pending, self._pending = self._pending, Counter()
        if not pending:
            return 0
        try:
            self._ensure_schema()
            with self._write_lock, self.engine.begin() as conn:
                _upsert(conn, [dict(zip(KEY, key), n=n) for key, n in pending.items()])
        except Exception as exc:
            self._keep(pending)  # whatever failed, the counts are written at a later flush
            if not isinstance(exc, SQLAlchemyError):
                raise
            self._went_down(exc)
            return 0
        if self._down:
            self._down = False
            log.warning("history database %s is back: wrote %d buffered rows%s", self.where, len(pending),
                        f" ({self._dropped} older rows were dropped while it was away)" if self._dropped else "")
            self._dropped = 0
        return len(pending)

    def _keep(self, pending: Counter) -> None:
        """Put unwritten counts back in the buffer (newer counts added meanwhile stay), bounded."""
        with self._buffer_lock:
            self._pending.update(pending)
            excess = len(self._pending) - MAX_BUFFERED_ROWS
            if excess > 0:
                for key in sorted(self._pending)[:excess]:  # keys start with the minute: oldest first
                    del self._pending[key]
                self._dropped += excess

    def _went_down(self, exc: Exception) -> None:
        if not self._down:
            self._down = True
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            log.warning("history database %s is unreachable (%s): keeping counts in memory (at most %d rows) "
                        "and retrying every second", self.where, reason, MAX_BUFFERED_ROWS)

    @property
    def buffered(self) -> int:
        """Rows waiting to be written."""
        with self._buffer_lock:
            return len(self._pending)

    def prune(self, now: datetime | None = None) -> int:
        now = now or datetime.now(timezone.utc)
        cutoff = (now - timedelta(days=self.retention_days)).strftime("%Y-%m-%dT%H:%M")
        try:
            with self._write_lock, self.engine.begin() as conn:
                return conn.execute(counts.delete().where(counts.c.minute < cutoff)).rowcount
        except SQLAlchemyError as exc:  # retried at the next hourly prune
            self._went_down(exc)
            return 0

    def _read(self, stmt) -> list:
        self.flush()
        try:
            self._ensure_schema()
            with self.engine.connect() as conn:
                return conn.execute(stmt).all()
        except SQLAlchemyError as exc:
            self._went_down(exc)
            raise HistoryUnavailable(f"the history database ({self.where}) is not reachable right now; "
                                     "counts are kept and written when it is back") from None

    def query(self, bucket: str = "minute", since: datetime | None = None) -> list[dict]:
        """Rows (start, camera, label, kind, n) summed per bucket ('minute' or 'hour'), oldest first."""
        if bucket not in ("minute", "hour"):
            raise ValueError("bucket must be 'minute' or 'hour'")
        since = since or datetime.now(timezone.utc) - timedelta(days=1)
        start = since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M")
        b = func.substr(counts.c.minute, 1, 16 if bucket == "minute" else 13).label("b")
        stmt = (select(b, counts.c.camera, counts.c.label, counts.c.kind, func.sum(counts.c.n))
                .where(counts.c.minute >= start)
                .group_by(b, counts.c.camera, counts.c.label, counts.c.kind)
                .order_by(b, counts.c.camera, counts.c.label, counts.c.kind))
        suffix = ":00Z" if bucket == "minute" else ":00:00Z"
        return [dict(zip(COLUMNS, (b + suffix, camera, label, kind, int(n))))
                for b, camera, label, kind, n in self._read(stmt)]

    def totals(self, kind: str, since: datetime) -> Counter[str]:
        """Counts per label since ``since`` (e.g. people today), pending ones included."""
        start = since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M")
        stmt = (select(counts.c.label, func.sum(counts.c.n))
                .where(counts.c.kind == kind, counts.c.minute >= start).group_by(counts.c.label))
        return Counter({label: int(n) for label, n in self._read(stmt)})

    @staticmethod
    def to_csv(rows: list[dict]) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
        return out.getvalue()

    def close(self) -> None:
        self.flush()
        self.engine.dispose()
