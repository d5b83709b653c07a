"""Storage contract (PostgreSQL): connections the server dropped are replaced transparently."""

from __future__ import annotations

import uuid

import pytest

import flowpro
from flowpro.job import JobState, utcnow
from tests.conftest import pg_base_url
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
