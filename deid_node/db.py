"""Engines for the node's databases, with the settings durability depends on.

SQLite files are created owner-only (0600) before SQLite opens them, because the
registry and the audit store hold original identifiers. WAL mode lets the CLI
read the audit log and the queue while the node writes.

``durable=True`` (the registry) fsyncs every commit: losing a patient's row
after images went out under its pseudonym would break longitudinal linkage.
The queue and the audit log use ``synchronous=NORMAL``: in WAL mode a commit
survives any crash of the process, and only an OS crash or power loss can drop
the last few; the queue is rebuilt from the fsynced spool files in that case
(see :meth:`deid_node.pipeline.node.Node._recover_spool`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def make_engine(url: str, *, durable: bool = True) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, future=True)
    db_path = parsed.database
    if db_path and db_path != ":memory:":
        path = Path(db_path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions start.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        _wal(cur)
        cur.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:  # type: ignore[no-untyped-def]
        # BEGIN IMMEDIATE takes the write lock up front, so two writers never
        # deadlock upgrading read locks; busy_timeout makes the second wait.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _wal(cur: sqlite3.Cursor) -> None:
    """Switch a new database to WAL. The switch needs the file to itself, and SQLite
    answers "database is locked" at once, without its busy timeout, while another
    process holds it: on a first start the node's processes (or several nodes'
    CLIs) open a new file together. Once switched, the mode stays with the file."""
    deadline = time.monotonic() + 30
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
