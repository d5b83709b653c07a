"""Storage contract (PostgreSQL): connections the server dropped are replaced transparently."""

from __future__ import annotations

import uuid

import pytest

import flowpro
from flowpro.job import JobState, utcnow
from tests.conftest import eventually, pg_base_url
from tests.storage.helpers import new_job

pytestmark = pytest.mark.postgres


@pytest.fixture
def tagged_app(pg_schema_url):
    """A migrated FlowPro whose connections carry a unique application_name."""
    name = f"flowpro_test_{uuid.uuid4().hex[:10]}"
    app = flowpro.FlowPro(f"{pg_schema_url}&application_name={name}")
    app.migrate()
    yield app, name
    app.close()


def drop_connections(application_name: str) -> int:
    """Terminate this app's server-side connections, as a restart or failover would."""
    import psycopg

    with psycopg.connect(pg_base_url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (application_name,),
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("operation", ["get", "insert", "fetch", "ack", "list"])
def test_a_call_after_the_server_dropped_the_pooled_connections_still_succeeds(
    tagged_app, operation
):
    app, name = tagged_app
    job = app.insert(new_job())
    running = None
    if operation == "ack":
        running = app.storage.fetch_jobs("q", demand=1, node="n", now=utcnow())[0]

    assert drop_connections(name) >= 1

    if operation == "get":
        assert app.get_job(job.id).state is JobState.AVAILABLE
    elif operation == "insert":
        assert app.get_job(app.insert(new_job()).id) is not None
    elif operation == "fetch":
        assert [j.id for j in app.storage.fetch_jobs("q", demand=5, node="n", now=utcnow())] == [
            job.id
        ]
    elif operation == "ack":
        ack = flowpro.job.Ack(
            id=running.id, attempt=running.attempt, state=JobState.COMPLETED, at=utcnow()
        )
        assert app.storage.ack_jobs([ack]) == [job.id]
    else:
        assert [j.id for j in app.list_jobs()] == [job.id]


def server_connections(application_name: str) -> int:
    import psycopg

    with psycopg.connect(pg_base_url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_repeated_runs_reuse_the_producers_connections_instead_of_leaving_them_open(tagged_app):
    # Every run() starts new producer threads, each with a connection of its own. They hand
    # them over as they end and the next run's producers take them: before, every run left
    # its producers' connections open until close() (eight runs, eight more connections).
    app, name = tagged_app
    opened: list[int] = []
    for _ in range(8):
        app.insert(new_job())
        app.run(queues={"q": 2}, until_idle=True)
        opened.append(server_connections(name))

    assert len(app.list_jobs(state="completed", limit=20)) == 8
    assert max(opened) <= opened[0] + 1, opened  # (+1: a pooled connection opened later)
    app.close()
    assert eventually(lambda: server_connections(name) == 0)
