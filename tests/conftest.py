"""Fixtures for the services every integration test needs, started by the tests.

A service that cannot be had here skips the test locally, and fails it when
``CI=true``: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from invoice_batch.broker import BrokerError, running_broker

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def unavailable(reason: str) -> None:
    """Skip locally, fail under CI=true."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Tansu broker on a free loopback port for the whole session."""
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    try:
        with running_broker(log) as bootstrap:
            yield bootstrap
    except BrokerError as exc:
        unavailable(f"the Tansu broker could not start: {exc}")


@pytest.fixture()
def topics() -> dict[str, str]:
    """Fresh topic and group names per test."""
    suffix = uuid.uuid4().hex[:10]
    return {
        "INPUT_TOPIC": f"invoices-{suffix}",
        "OUTPUT_TOPIC": f"classified-{suffix}",
        "DLQ_TOPIC": f"dlq-{suffix}",
        "CONSUMER_GROUP": f"group-{suffix}",
    }


def _postgres_database() -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"invoice_batch_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_URL}: {str(exc).splitlines()[0]}")
    base = POSTGRES_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture()
def database_url_postgres_available() -> None:
    """Skip (or fail under CI=true) when the PostgreSQL server is not reachable."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_URL}: {str(exc).splitlines()[0]}")
    finally:
        engine.dispose()


@pytest.fixture()
def _postgres_url_for_proxy() -> Iterator[list[str]]:
    """A fresh PostgreSQL database, as a one-element list (for tests that route it)."""
    for url in _postgres_database():
        yield [url]
