"""Storage contract: inserting jobs (single, bulk, in the caller's transaction) and reading them."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import sqlalchemy as sa

import flowpro
from flowpro.job import JobState, utcnow
from flowpro.storage import open_storage
from tests.storage.helpers import Noop, Other, ago, later, new_job


def caller_engine(url: str) -> sa.Engine:
    """An application's own engine on the same database (psycopg 3 for PostgreSQL)."""
    if url.startswith("postgresql://"):
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return sa.create_engine(url)


# Inserting one job


def test_an_inserted_job_reads_back_field_for_field(storage):
    new = Noop.new(
        {"url": "https://x", "n": [1, 2.5, None], "nested": {"ok": True}},
        priority=3,
        max_attempts=4,
        tags=["a", "b"],
        meta={"tenant": "t1"},
    )

    saved = storage.insert_jobs([new])[0]
    read = storage.get_job(saved.id)

    assert read == saved
    assert read.state is JobState.AVAILABLE
    assert (read.queue, read.worker) == ("q", Noop.__flowpro_name__)
    assert read.args == {"url": "https://x", "n": [1, 2.5, None], "nested": {"ok": True}}
    assert (read.meta, read.tags, read.errors) == ({"tenant": "t1"}, ["a", "b"], [])
    assert (read.attempt, read.max_attempts, read.priority) == (0, 4, 3)
    assert read.attempted_by is None and read.attempted_at is None
    assert read.completed_at is None and read.cancelled_at is None and read.discarded_at is None
    assert read.recorded is None
    assert read.inserted_at.tzinfo is not None
    assert abs(read.inserted_at - utcnow()) < timedelta(seconds=5)
    assert read.scheduled_at == read.inserted_at


def test_unicode_args_round_trip_unchanged(storage):
    args = {"text": "héllo wörld 😀 中文", "quote": 'a "b" \\ c', "literal": "\\u0000"}

    saved = storage.insert_jobs([new_job(args)])[0]

    assert storage.get_job(saved.id).args == args


def test_a_job_scheduled_in_the_future_is_saved_scheduled(storage):
    saved = storage.insert_jobs([new_job(schedule_in=60)])[0]

    read = storage.get_job(saved.id)
    assert read.state is JobState.SCHEDULED
    assert read.scheduled_at - read.inserted_at == timedelta(seconds=60)
    assert read == saved


def test_a_job_scheduled_in_the_past_is_saved_available(storage):
    at = ago(3600)

    saved = storage.insert_jobs([new_job(scheduled_at=at)])[0]

    read = storage.get_job(saved.id)
    assert read.state is JobState.AVAILABLE
    assert read.scheduled_at == at


def test_scheduled_at_in_another_timezone_is_stored_as_the_same_instant(storage):
    from datetime import timezone

    at = later(600).astimezone(timezone(timedelta(hours=-5)))

    saved = storage.insert_jobs([new_job(scheduled_at=at)])[0]

    read = storage.get_job(saved.id)
    assert read.state is JobState.SCHEDULED
    assert read.scheduled_at == at
    assert read.scheduled_at.utcoffset() == timedelta(0)


def test_get_job_of_a_missing_id_returns_none(storage):
    assert storage.get_job(987_654_321) is None


# Bulk inserts


def test_a_bulk_insert_of_a_thousand_jobs_matches_each_job_to_its_own_id(storage):
    news = [
        new_job({"i": i}, priority=i % 10, schedule_in=60 if i % 3 == 0 else None)
        for i in range(1_000)
    ]

    saved = storage.insert_jobs(news)

    assert [s.args["i"] for s in saved] == list(range(1_000))
    assert len({s.id for s in saved}) == 1_000
    stored = {j.id: j for j in storage.list_jobs(limit=2_000)}
    assert len(stored) == 1_000
    for job in saved:
        read = stored[job.id]
        assert read == job
        assert read.priority == read.args["i"] % 10
        expected = JobState.SCHEDULED if read.args["i"] % 3 == 0 else JobState.AVAILABLE
        assert read.state is expected


def test_inserting_no_jobs_is_a_no_op(storage):
    assert storage.insert_jobs([]) == []
    assert storage.count_jobs() == {}


def test_a_bulk_insert_with_one_job_the_database_refuses_inserts_none(storage):
    good = [new_job({"i": i}) for i in range(5)]
    bad = dataclasses.replace(new_job({"i": 99}), queue=None)  # NOT NULL violation

    with pytest.raises(flowpro.StorageError, match=r"insert\w* failed") as caught:
        storage.insert_jobs([*good, bad, *good])

    assert caught.value.__cause__ is not None
    assert storage.list_jobs() == []


def test_insert_all_with_one_job_that_is_not_a_new_job_inserts_none(fp):
    with pytest.raises(TypeError, match=r"Worker\.new"):
        fp.insert_all([new_job(), {"worker": "x"}, new_job()])

    assert fp.list_jobs() == []


def test_insert_all_with_one_job_whose_args_are_bad_inserts_none(fp):
    with pytest.raises(flowpro.ArgsError):
        fp.insert_all([new_job({"i": 1}), new_job({"i": {1, 2}}), new_job({"i": 3})])

    assert fp.list_jobs() == []


# Inserting in the caller's transaction


def test_an_insert_in_the_callers_transaction_is_gone_when_it_rolls_back(fp, db_url):
    engine = caller_engine(db_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("CREATE TABLE app_orders (id INTEGER PRIMARY KEY)"))
            conn.commit()

        with pytest.raises(RuntimeError, match="abort"), engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO app_orders (id) VALUES (1)"))
            job = fp.insert(new_job({"order": 1}), conn=conn)
            assert job.id is not None
            raise RuntimeError("abort")

        with engine.connect() as conn:
            orders = conn.execute(sa.text("SELECT count(*) FROM app_orders")).scalar_one()
    finally:
        engine.dispose()
    assert orders == 0
    assert fp.get_job(job.id) is None
    assert fp.list_jobs() == []


def test_an_insert_in_the_callers_transaction_is_visible_once_it_commits(fp, db_url):
    engine = caller_engine(db_url)
    try:
        with engine.begin() as conn:
            jobs = fp.insert_all([new_job({"i": 1}), new_job({"i": 2})], conn=conn)
            single = fp.insert(new_job({"i": 3}), conn=conn)
            # Not visible to other connections before the commit.
            assert fp.get_job(single.id) is None
    finally:
        engine.dispose()

    assert [fp.get_job(j.id).args for j in [*jobs, single]] == [{"i": 1}, {"i": 2}, {"i": 3}]


# Listing and counting


def test_list_jobs_filters_by_state_queue_and_worker_newest_first(storage):
    a = storage.insert_jobs([new_job({"n": "a"})])[0]
    b = storage.insert_jobs([new_job({"n": "b"}, schedule_in=60)])[0]
    c = storage.insert_jobs([Other.new({"n": "c"})])[0]
    d = storage.insert_jobs([new_job({"n": "d"}, queue="other")])[0]

    def ids(**filters):
        return [j.id for j in storage.list_jobs(**filters)]

    assert ids() == [d.id, c.id, b.id, a.id]
    assert ids(newest_first=False) == [a.id, b.id, c.id, d.id]
    assert ids(states=["available"]) == [d.id, c.id, a.id]
    assert ids(states=["scheduled", "completed"]) == [b.id]
    assert ids(queues=["other"]) == [d.id, c.id]
    assert ids(workers=[Other.__flowpro_name__]) == [c.id]
    assert ids(queues=["other"], workers=[Noop.__flowpro_name__]) == [d.id]
    assert ids(states=["available"], queues=["q"]) == [a.id]
    assert ids(states=["executing"]) == []
    assert ids(limit=2) == [d.id, c.id]


def test_facade_list_jobs_takes_worker_classes_names_and_single_values(fp):
    a = fp.insert(new_job())
    b = fp.insert(Other.new({}))

    assert [j.id for j in fp.list_jobs(worker=Other)] == [b.id]
    assert [j.id for j in fp.list_jobs(worker=[Noop, Other.__flowpro_name__])] == [b.id, a.id]
    assert [j.id for j in fp.list_jobs(state="available", queue="q")] == [a.id]
    assert [j.id for j in fp.list_jobs(state=["completed"])] == []
    with pytest.raises(ValueError, match="finished"):
        fp.list_jobs(state="finished")


def test_count_jobs_counts_per_state(storage):
    storage.insert_jobs([new_job(), new_job(), new_job(schedule_in=60)])

    assert storage.count_jobs() == {"available": 2, "scheduled": 1}


# Errors


def test_a_database_without_flowpros_tables_raises_a_storage_error_with_the_cause(db_url):
    storage = open_storage(db_url)  # not migrated
    try:
        assert storage.schema_is_current() is False
        with pytest.raises(flowpro.StorageError, match=r"insert\w* failed") as caught:
            storage.insert_jobs([new_job()])
        assert caught.value.__cause__ is not None
        with pytest.raises(flowpro.StorageError, match="failed"):
            storage.get_job(1)
    finally:
        storage.close()


@pytest.mark.parametrize("url", ["mysql://x/y", "nonsense", "sqlite:////no/such/folder/x.db"])
def test_a_bad_database_url_is_a_config_error(url):
    with pytest.raises(flowpro.ConfigError):
        open_storage(url)
