"""History through SQLAlchemy Core on the default SQLite file: schema versions, adding upserts
from several writers, and the bound on what is kept while the database is away."""

import sqlite3
import threading
from collections import Counter
from datetime import datetime, timezone

import pytest

from webapp import history as history_module
from webapp.history import SCHEMA_VERSION, History, database_url

LEGACY_SCHEMA = """
CREATE TABLE counts (minute TEXT NOT NULL, camera TEXT NOT NULL, label TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('people', 'detections')), n INTEGER NOT NULL,
    PRIMARY KEY (minute, camera, label, kind)) WITHOUT ROWID;
"""


def test_a_file_from_before_schema_versions_is_upgraded_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_SCHEMA)
        db.execute("INSERT INTO counts VALUES ('2026-11-27T08:00', 'door', 'with_mask', 'people', 4)")
    history = History(database_url(None, path))
    history.add("people", "door", "with_mask", 1, ts=1_795_766_400.0)  # 2026-11-27T05:20Z
    history.flush()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    rows = history.query("hour", since=datetime(2026, 11, 27, tzinfo=timezone.utc))
    assert sum(r["n"] for r in rows) == 5
    history.close()


def test_concurrent_writers_add_up_and_never_lose_a_count(tmp_path):
    """Two servers' worth of writers on one database, the same minutes and keys."""
    url = database_url(None, tmp_path / "h.sqlite3")
    writers = [History(url), History(url)]

    def write(h: History) -> None:
        for i in range(200):
            h.add("detections", "door", "with_mask", 1, ts=1_795_766_400.0 + i % 120)
            if i % 20 == 0:
                h.flush()
        h.flush()
    threads = [threading.Thread(target=write, args=(h,)) for h in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = writers[0].query("minute", since=datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert sum(r["n"] for r in rows) == 400
    for h in writers:
        h.close()


def test_the_outage_buffer_keeps_the_newest_minutes(tmp_path, monkeypatch):
    monkeypatch.setattr(history_module, "MAX_BUFFERED_ROWS", 3)
    history = History(database_url(None, tmp_path / "h.sqlite3"))
    pending = Counter({(f"2026-11-27T08:0{i}", "door", "with_mask", "people"): 1
                                                 for i in range(5)})
    history._keep(pending)
    assert sorted(k[0] for k in history._pending) == ["2026-11-27T08:02", "2026-11-27T08:03", "2026-11-27T08:04"]
    history.close()


def test_an_unexpected_error_while_writing_keeps_the_counts(tmp_path, monkeypatch):
    """Not only an unreachable database: any failed write leaves the counts for the next flush."""
    history = History(database_url(None, tmp_path / "h.sqlite3"))
    history.add("detections", "door", "with_mask", 3, ts=1_795_766_400.0)
    real_upsert = history_module._upsert

    def broken(conn, rows):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(history_module, "_upsert", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):  # logged by the service's write loop
        history.flush()
    assert history.buffered == 1
    monkeypatch.setattr(history_module, "_upsert", real_upsert)
    assert history.flush() == 1
    rows = history.query("minute", since=datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert sum(r["n"] for r in rows) == 3
    history.close()
