"""Creating engines and migrating the store schema with Alembic."""

from __future__ import annotations

from importlib import resources
from typing import Any, get_args

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event

from invoice_batch.settings import SqliteSynchronous, ensure_sqlite_dir

# Bytes in SQLite's WAL before the committing connection copies them into the
# database (the default is 1,000 pages: 4 MB with 4 KB pages). A consumer poll of
# ~4 KB rows writes more than 4 MB, so that default would checkpoint (and fsync) at
# every commit; 64 MB checkpoints every few polls, each page once. With the 64 KB
# pages of files made here, the default already comes to 64 MB.
SQLITE_WAL_CHECKPOINT_BYTES = 64 * 1024 * 1024


def make_engine(
    url: str, *, sqlite_synchronous: SqliteSynchronous = "full", **kwargs: Any
) -> Engine:
    """An engine tuned for the services: WAL and a busy timeout on SQLite.

    ``sqlite_synchronous`` (``SQLITE_SYNCHRONOUS``): ``full`` fsyncs SQLite's WAL at
    every commit, so a committed poll survives a host crash as well as a process
    crash, as on PostgreSQL; ``normal`` fsyncs it only at checkpoints (faster, and a
    host crash can then roll back commits whose Kafka offsets were committed).
    """
    if sqlite_synchronous not in get_args(SqliteSynchronous):
        raise ValueError(f"sqlite_synchronous: {sqlite_synchronous!r} is not one of full, normal")
    ensure_sqlite_dir(url)
    if url.startswith("sqlite"):
        # 30 s: a writer waits for another process's transaction instead of failing.
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # Takes effect only when the file is created (before WAL fixes it). An
            # invoice row is ~4.5 KB (payload and the raw record): with 4 KB pages every
            # row spills into overflow pages, which a claim's UPDATE rewrites whole.
            # 64 KB pages halve the time to insert and to claim 100,000 rows.
            cursor.execute("PRAGMA page_size=65536")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous.upper()}")
            cursor.execute("PRAGMA foreign_keys=ON")
            (page_size,) = cursor.execute("PRAGMA page_size").fetchone()
            pages = max(1_000, SQLITE_WAL_CHECKPOINT_BYTES // int(page_size))
            cursor.execute(f"PRAGMA wal_autocheckpoint={pages}")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("invoice_batch.store").joinpath("migrations"))
    )
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_schema(engine: Engine) -> None:
    """Create or migrate the schema to the newest revision. Idempotent."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
