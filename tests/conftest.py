"""Shared fixtures: every behaviour test runs on real SQLite and real PostgreSQL."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest

import flowpro

DEFAULT_PG_URL = "postgresql://root@127.0.0.1:5432/test"
# Short timings so that tests never wait long; production defaults are in NodeConfig.
FAST = dict(
    poll_interval=0.02,
    heartbeat_interval=0.1,
    rescue_after=1.0,
    rescue_interval=0.1,
    leader_ttl=1.0,
    stage_interval=0.02,
    cron_interval=0.1,
    shutdown_grace=2.0,
    idle_check_interval=0.02,
)


def pg_base_url() -> str:
    return os.environ.get("FLOWPRO_TEST_PG_URL", DEFAULT_PG_URL)


_pg_error: list[str] = []


def _pg_available() -> str | None:
    """Return None when PostgreSQL answers, else the reason."""
    if _pg_error:
        return _pg_error[0] or None
    try:
        import psycopg

        with psycopg.connect(pg_base_url(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        _pg_error.append("")
        return None
    except Exception as exc:  # pragma: no cover - depends on the machine
        _pg_error.append(f"PostgreSQL at {pg_base_url()} is unreachable: {exc}")
        return _pg_error[0]


def require_pg() -> None:
    """Fail in CI, skip locally, when PostgreSQL is missing."""
    reason = _pg_available()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the PostgreSQL tests)")
    pytest.skip(f"{reason}; set FLOWPRO_TEST_PG_URL or start PostgreSQL to run these tests")


def with_schema(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema, dropped afterwards; yields its URL."""
    require_pg()
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_base_url(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(pg_base_url(), schema)
    finally:
        with psycopg.connect(pg_base_url(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The URL of an empty database of each kind (migrated by ``fp``)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/flowpro.db"
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture
def fp(db_url: str) -> Iterator[flowpro.FlowPro]:
    """A migrated FlowPro with fast test timings."""
    app = flowpro.FlowPro(db_url, **FAST)
    app.migrate()
    yield app
    app.stop()
    app.close()


@pytest.fixture
def storage(fp: flowpro.FlowPro) -> Any:
    return fp.storage


def run_in_threads(target: Callable[[], Any], count: int) -> None:
    """Run ``target`` in ``count`` threads at once and wait for all of them."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Return check()'s first truthy value, polling until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        time.sleep(interval)
