"""PostgreSQL only: the planner setting every flowpro connection carries, and plans it must keep."""

from __future__ import annotations

import datetime

import pytest
import sqlalchemy as sa

import flowpro

pytestmark = pytest.mark.postgres


def test_pooled_and_producer_connections_plan_with_a_random_page_cost_of_1_1(pg_schema_url):
    app = flowpro.FlowPro(pg_schema_url)
    try:
        with app.storage.engine.connect() as conn:
            pooled = conn.execute(sa.text("SHOW random_page_cost")).scalar_one()
        raw = app.storage._hot_connection()  # a producer's own connection
        own = raw.execute("SHOW random_page_cost").fetchone()[0]
        raw.rollback()
        plain = sa.create_engine(app.storage.engine.url)
        with plain.connect() as conn:
            default = conn.execute(sa.text("SHOW random_page_cost")).scalar_one()
        plain.dispose()
    finally:
        app.close()

    assert (pooled, own) == ("1.1", "1.1")
    assert default != "1.1"  # the server's own setting: only flowpro's sessions change


def test_flowpro_sessions_run_in_utc_and_claims_return_plain_utc_datetimes(pg_schema_url):
    # In a server zone (this server's is 'Etc/UTC', a ZoneInfo to psycopg) every claimed
    # timestamp was loaded in that zone and converted again.
    app = flowpro.FlowPro(pg_schema_url)
    app.migrate()
    try:
        with app.storage.engine.connect() as conn:
            pooled = conn.execute(sa.text("SHOW TimeZone")).scalar_one()
        raw = app.storage._hot_connection()
        own = raw.execute("SHOW TimeZone").fetchone()[0]
        raw.rollback()
        job = app.insert(_Tz.new({}))
        _, claimed = app.storage.ack_and_fetch(
            [], "tz", demand=1, node="n1", now=flowpro.job.utcnow()
        )
    finally:
        app.close()

    assert (pooled, own) == ("UTC", "UTC")
    assert [c.id for c in claimed] == [job.id]
    # The very object psycopg makes for UTC, not a zone that merely has offset 0.
    assert claimed[0].scheduled_at.tzinfo is datetime.UTC
    assert claimed[0].inserted_at.tzinfo is datetime.UTC


class _Tz(flowpro.Worker, queue="tz", name="settings.Tz"):
    def process(self, job: flowpro.Job) -> None:
        return None


def _plan_nodes(node: dict) -> list[dict]:
    out = [node]
    for child in node.get("Plans", []):
        out += _plan_nodes(child)
    return out


def test_a_chunk_claim_reads_a_large_partition_in_order_and_sorts_nothing(pg_schema_url):
    # Without statistics (a new table, autovacuum not yet round) PostgreSQL once read all
    # 60,000 ready jobs of a partition and sorted them on disk for each claim of 100.
    app = flowpro.FlowPro(pg_schema_url)
    app.migrate()
    try:
        with app.storage.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO flowpro_jobs (state, queue, worker, args, meta, tags, errors, "
                    "max_attempts, inserted_at, scheduled_at, chunk_key) SELECT 'available', "
                    "'chunked', 'w.Chunked', '{}', '{}', '[]', '[]', 20, now(), now(), '[]' "
                    "FROM generate_series(1, 60000)"
                )
            )
        picked, params = app.storage._chunk_pick(
            "chunked", "w.Chunked", 100, None, "n1", flowpro.job.utcnow()
        )
        sql = picked + app.storage._picked_claim()
        with app.storage.engine.begin() as conn:
            plan = conn.execute(sa.text("EXPLAIN (FORMAT JSON) " + sql), params).scalar_one()
            conn.rollback()
    finally:
        app.close()

    nodes = _plan_nodes(plan[0]["Plan"])
    # The only sort allowed is the fallback's, of partitions by their best job (min(...)),
    # which runs only when the head's partition is not ready.
    sorts = [n["Sort Key"] for n in nodes if n["Node Type"] == "Sort"]
    assert all("min(" in key for keys in sorts for key in keys), sorts
    ctes = {n.get("Subplan Name"): n for n in nodes if n.get("Subplan Name")}
    picked_scans = [n for n in _plan_nodes(ctes["CTE locked"]) if "Index Cond" in n]
    assert any(
        n["Index Name"] == "flowpro_jobs_chunk_idx" and "chunk_key" in n["Index Cond"]
        for n in picked_scans
    ), picked_scans
