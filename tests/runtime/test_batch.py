"""Batches on real databases: one-transaction inserts, callbacks by kind, mixed outcomes,
recorded results from inside callbacks, and members added to a running batch."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

import flowpro
from flowpro import Batch
from flowpro.codecs import encrypted as codec
from flowpro.job import JobState

KINDS = ("attempted", "completed", "exhausted", "cancelled", "discarded", "retryable")
KEY = codec.generate_key()
KEY_FAILS_AFTER: list[int] = []  # the key source raises once it has been asked this often
_lock = threading.Lock()
CALLS: list[tuple[Any, ...]] = []


def note(*entry: Any) -> None:
    with _lock:
        CALLS.append(entry)


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    KEY_FAILS_AFTER.clear()
    yield
    CALLS.clear()


def flaky_key() -> str:
    if KEY_FAILS_AFTER:
        KEY_FAILS_AFTER[0] -= 1
        if KEY_FAILS_AFTER[0] < 0:
            raise flowpro.ConfigError("the key store is down")
    return KEY


# Members


class Member(flowpro.Worker, queue="batch", recorded=True, max_attempts=3):
    """Does what args["do"] says: ok (records n * 10), flaky (fails attempt 1), cancel,
    discard, fail (always raises), later (fails with a long backoff)."""

    def process(self, job):
        note("member", job.id, job.attempt)
        do = job.args.get("do", "ok")
        if do == "cancel":
            return flowpro.Cancel("not needed")
        if do == "discard":
            return flowpro.Discard("bad input")
        if do == "fail" or (do in ("flaky", "later") and job.attempt == 1):
            raise RuntimeError(f"{do} attempt {job.attempt}")
        return job.args.get("n", 0) * 10

    def backoff(self, job):
        return 3600 if job.args.get("do") == "later" else 0


class Done(flowpro.Worker, queue="callbacks"):
    """A callback worker implementing every kind."""

    def batch_attempted(self, job):
        note("attempted", job.meta["batch_id"])

    def batch_completed(self, job):
        note("completed", job.meta["batch_id"])

    def batch_exhausted(self, job):
        note("exhausted", job.meta["batch_id"])

    def batch_cancelled(self, job):
        note("cancelled", job.meta["batch_id"])

    def batch_discarded(self, job):
        note("discarded", job.meta["batch_id"])

    def batch_retryable(self, job):
        note("retryable", job.meta["batch_id"])


class SelfCallback(flowpro.Worker, queue="batch"):
    """Members whose own worker is the callback (the default)."""

    def process(self, job):
        note("self-member", job.id)

    def batch_completed(self, job):
        note("self-completed", job.meta["batch_id"], dict(job.args))


class Summary(flowpro.Worker, queue="callbacks", max_attempts=4):
    """Reads the batch from inside its callbacks; fails its first attempt when asked to."""

    def batch_exhausted(self, job):
        if job.args.get("fail_first") and job.attempt == 1:
            raise RuntimeError("summary not ready")
        note("jobs", sorted((m.id, str(m.state)) for m in Batch.all_jobs(job)))
        note("recorded", Batch.all_recorded(job))

    def backoff(self, job):
        return 0


class Secret(flowpro.Worker, queue="batch", recorded=True, encrypted=dict(key=flaky_key)):
    def process(self, job):
        return {"secret": job.args["secret"], "id": job.id}

    def batch_completed(self, job):
        note("secret-completed", job.args, sorted(Batch.all_recorded(job).values(), key=str))


class Grower(flowpro.Worker, queue="batch", recorded=True):
    """Adds args["more"] members to its own running batch."""

    def process(self, job):
        more = job.args.get("more", 0)
        if more:
            batch = Batch.append(job)
            for i in range(more):
                batch.add(Grower.new({"n": 100 + i}))
            added = batch.insert()
            note("added", [j.id for j in added], len(Batch.all_jobs(job)))
        return job.args.get("n", 0)

    def batch_completed(self, job):
        note("grown", sorted(Batch.all_recorded(job).values()))


class NoteArgs(BaseModel):
    n: int


class Strict(flowpro.Worker, queue="batch", structured=NoteArgs):
    def process(self, job):
        note("strict-member", job.args.n)

    def batch_completed(self, job):
        note("strict-completed", job.args)


class Only(flowpro.Worker, queue="callbacks"):
    def batch_completed(self, job):
        note("only-completed", job.meta["batch_id"])


# Helpers


def members(*plan: str) -> list[flowpro.job.NewJob]:
    return [Member.new({"do": do, "n": i}) for i, do in enumerate(plan)]


def callback_jobs(fp: flowpro.FlowPro, batch_id: str | None = None) -> list[flowpro.Job]:
    jobs = fp.storage.list_jobs(limit=100_000)
    return [
        j
        for j in jobs
        if "callback" in j.meta and (batch_id is None or j.meta["batch_id"] == batch_id)
    ]


def fired(fp: flowpro.FlowPro, batch_id: str) -> Counter[str]:
    """How many callback jobs of each kind the batch has."""
    return Counter(j.meta["callback"] for j in callback_jobs(fp, batch_id))


def callback_rows(fp: flowpro.FlowPro) -> list[tuple[str, str, int]]:
    with fp.storage.engine.connect() as c:  # type: ignore[attr-defined]
        rows = c.execute(sa.text("SELECT batch_id, kind, job_id FROM flowpro_batch_callbacks"))
        return sorted((r[0], r[1], r[2]) for r in rows)


def batch_rows(fp: flowpro.FlowPro) -> int:
    with fp.storage.engine.connect() as c:  # type: ignore[attr-defined]
        return int(c.execute(sa.text("SELECT count(*) FROM flowpro_batches")).scalar_one())


def ran_callbacks(batch_id: str) -> Counter[str]:
    return Counter(e[0] for e in CALLS if e[0] in KINDS and e[1] == batch_id)


# Inserting


def test_a_batch_is_inserted_in_one_transaction_with_its_id_in_every_members_meta(fp):
    batch = Batch(members("ok", "ok", "ok"), callback=Done, name="emails")

    saved = fp.insert(batch)

    assert len(saved) == 3
    stored = [fp.get_job(j.id) for j in saved]
    assert all(j.meta["batch_id"] == batch.batch_id for j in stored)
    assert all(j.meta["batch_name"] == "emails" for j in stored)
    assert all(j.batch_id == batch.batch_id and j.state == JobState.AVAILABLE for j in stored)
    assert batch_rows(fp) == 1


def test_a_member_that_fails_to_insert_leaves_nothing_of_the_batch_behind(fp):
    KEY_FAILS_AFTER.append(2)  # the third member's encryption fails mid-transaction
    batch = Batch([Secret.new({"secret": f"s{i}"}) for i in range(4)], callback=Done)

    with pytest.raises(flowpro.ConfigError, match="'flaky_key' raised"):
        fp.insert(batch)

    assert fp.storage.count_jobs() == {}
    assert batch_rows(fp) == 0


def test_a_member_with_bad_args_fails_before_anything_is_inserted(fp):
    with pytest.raises(flowpro.ArgsError, match="typo"):
        Batch([Strict.new({"n": 1}), Strict.new({"n": 2, "typo": 3})], callback=Done)

    assert fp.storage.count_jobs() == {}
    assert batch_rows(fp) == 0


def test_a_batch_inserted_in_a_rolled_back_transaction_leaves_nothing(fp):
    engine = fp.storage.engine

    with engine.connect() as conn:
        tx = conn.begin()
        fp.insert(Batch(members("ok", "ok"), callback=Done), conn=conn)
        tx.rollback()

    assert fp.storage.count_jobs() == {}
    assert batch_rows(fp) == 0


def test_an_empty_batch_or_mixed_workers_without_a_callback_are_refused(fp):
    with pytest.raises(flowpro.GraphError, match="no jobs"):
        fp.insert(Batch([], callback=Done))
    with pytest.raises(flowpro.GraphError, match="several workers"):
        fp.insert(Batch([Member.new({}), SelfCallback.new({})]))
    with pytest.raises(flowpro.GraphError, match="Worker class"):
        fp.insert(Batch([Member.new({})], callback=print))  # type: ignore[arg-type]

    assert fp.storage.count_jobs() == {}


# Callbacks


def test_the_default_callback_is_the_members_worker_and_callback_args_reach_it(fp):
    batch = Batch(
        [SelfCallback.new({}) for _ in range(2)], name="self", callback_args={"report": "daily"}
    )
    fp.insert(batch)

    fp.drain()

    [callback] = callback_jobs(fp)
    assert callback.worker == SelfCallback.__flowpro_name__
    assert callback.queue == SelfCallback.queue
    assert callback.args == {"report": "daily"}
    assert callback.meta == {
        "batch_id": batch.batch_id,
        "batch_name": "self",
        "callback": "completed",
    }
    assert callback.state == JobState.COMPLETED
    assert [e for e in CALLS if e[0] == "self-completed"] == [
        ("self-completed", batch.batch_id, {"report": "daily"})
    ]
    assert len([e for e in CALLS if e[0] == "self-member"]) == 2  # process() ran for members only


def test_a_callback_job_runs_on_its_workers_queue_with_the_batch_in_its_meta(fp):
    batch = Batch(members("ok"), callback=Done, callback_args={"to": "ops"})
    fp.insert(batch)

    fp.drain(queue="batch")

    callbacks = callback_jobs(fp, batch.batch_id)
    assert sorted(j.meta["callback"] for j in callbacks) == ["attempted", "completed", "exhausted"]
    assert all(j.queue == "callbacks" and j.state == JobState.AVAILABLE for j in callbacks)
    assert all(j.worker == Done.__flowpro_name__ and j.args == {"to": "ops"} for j in callbacks)
    assert all(j.meta["batch_id"] == batch.batch_id for j in callbacks)

    fp.drain(queue="callbacks")

    assert ran_callbacks(batch.batch_id) == Counter(attempted=1, completed=1, exhausted=1)


def test_a_structured_members_worker_as_callback_gets_the_plain_callback_args(fp):
    batch = Batch([Strict.new({"n": 1}), Strict.new({"n": 2})], callback_args={"to": "ops"})
    fp.insert(batch)

    outcome = fp.drain()

    assert outcome == {"completed": 3}
    assert sorted(e[1] for e in CALLS if e[0] == "strict-member") == [1, 2]
    assert [e[1] for e in CALLS if e[0] == "strict-completed"] == [{"to": "ops"}]


def test_an_encrypted_members_worker_as_callback_runs_and_reads_decrypted_records(fp):
    batch = Batch([Secret.new({"secret": "a"}), Secret.new({"secret": "b"})])
    saved = fp.insert(batch)

    outcome = fp.drain()

    assert outcome == {"completed": 3}
    [(_, args, values)] = [e for e in CALLS if e[0] == "secret-completed"]
    assert args == {}
    assert values == [{"secret": "a", "id": saved[0].id}, {"secret": "b", "id": saved[1].id}]


def test_callback_args_for_an_encrypted_callback_worker_are_refused(fp):
    batch = Batch([Secret.new({"secret": "a"})], callback_args={"ssn": "078-05-1120"})

    with pytest.raises(flowpro.GraphError, match="plain text"):
        fp.insert(batch)

    assert fp.storage.count_jobs() == {}


def test_only_the_kinds_the_callback_worker_implements_are_inserted(fp):
    batch = Batch(members("ok", "discard"), callback=Only)
    fp.insert(batch)

    fp.drain()

    assert fired(fp, batch.batch_id) == Counter()  # completed cannot happen: a member discarded
    ok = Batch(members("ok", "ok"), callback=Only)
    fp.insert(ok)
    fp.drain()
    assert fired(fp, ok.batch_id) == Counter(completed=1)
    assert [e for e in CALLS if e[0] == "only-completed"] == [("only-completed", ok.batch_id)]


# Mixed outcomes: which callbacks fire, and which never do

OUTCOMES = [
    pytest.param(("ok", "ok", "ok"), {"attempted", "completed", "exhausted"}, id="all-complete"),
    pytest.param(
        ("ok", "discard", "ok"), {"attempted", "exhausted", "discarded"}, id="one-discarded"
    ),
    pytest.param(
        ("ok", "fail", "ok"),
        {"attempted", "exhausted", "discarded", "retryable"},
        id="one-exhausts-its-attempts",
    ),
    pytest.param(
        ("flaky", "ok", "flaky"),
        {"attempted", "completed", "exhausted", "retryable"},
        id="retried-then-completed",
    ),
    pytest.param(
        ("cancel", "ok", "discard", "cancel", "discard"),
        {"attempted", "exhausted", "cancelled", "discarded"},
        id="cancelled-and-discarded",
    ),
    pytest.param(("cancel",), {"attempted", "exhausted", "cancelled"}, id="single-cancelled"),
]


@pytest.mark.parametrize(("plan", "expected"), OUTCOMES)
def test_mixed_outcomes_fire_exactly_the_due_callbacks_once_each(fp, plan, expected):
    batch = Batch(members(*plan), callback=Done)
    fp.insert(batch)

    outcome = fp.drain()

    assert fired(fp, batch.batch_id) == Counter(dict.fromkeys(expected, 1))
    assert ran_callbacks(batch.batch_id) == Counter(dict.fromkeys(expected, 1))
    never = set(KINDS) - expected
    assert not never & set(fired(fp, batch.batch_id))
    assert outcome["completed"] == plan.count("ok") + plan.count("flaky") + len(expected)
    assert sorted(callback_rows(fp)) == sorted(
        (batch.batch_id, j.meta["callback"], j.id) for j in callback_jobs(fp, batch.batch_id)
    )


def test_batch_completed_never_fires_once_a_member_is_discarded_even_if_retried_later(fp):
    batch = Batch(members("discard", "ok"), callback=Done)
    [bad, _good] = fp.insert(batch)
    fp.drain()

    fp.retry_job(bad.id)  # the retry is discarded again
    fp.drain()

    assert fired(fp, batch.batch_id)["completed"] == 0
    assert fired(fp, batch.batch_id)["discarded"] == 1
    assert fired(fp, batch.batch_id)["exhausted"] == 1


def test_a_finished_member_retried_by_hand_is_counted_once(fp):
    batch = Batch(members("ok", "later"), callback=Done)
    [done, later] = fp.insert(batch)
    fp.drain()

    fp.retry_job(done.id)  # completes a second time while "later" still waits for its retry
    fp.drain()

    assert fp.get_job(later.id).state == JobState.RETRYABLE
    assert fired(fp, batch.batch_id) == Counter(retryable=1, attempted=1)
    fp.retry_job(later.id)
    fp.drain()
    assert fired(fp, batch.batch_id) == Counter(retryable=1, attempted=1, completed=1, exhausted=1)


def test_a_discarded_member_retried_to_success_completes_the_batch(fp):
    batch = Batch(members("ok", "fail"), callback=Done)
    [_ok, failed] = fp.insert(batch)
    fp.drain()
    assert fired(fp, batch.batch_id) == Counter(attempted=1, retryable=1, discarded=1, exhausted=1)

    with fp.storage.engine.begin() as c:  # the bug is fixed: the retry now succeeds
        c.execute(
            sa.text("UPDATE flowpro_jobs SET args = :a WHERE id = :id"),
            {"a": '{"do": "ok", "n": 1}', "id": failed.id},
        )
    fp.retry_job(failed.id)
    fp.drain()

    assert fired(fp, batch.batch_id) == Counter(
        attempted=1, retryable=1, discarded=1, exhausted=1, completed=1
    )


def test_batch_cancelled_fires_on_the_first_cancellation_while_other_members_wait(fp):
    batch = Batch(
        [Member.new({"do": "cancel"}), Member.new({"do": "ok"}, schedule_in=3600)], callback=Done
    )
    fp.insert(batch)

    fp.drain()

    assert fired(fp, batch.batch_id) == Counter(cancelled=1)
    assert ran_callbacks(batch.batch_id) == Counter(cancelled=1)


def test_a_member_cancelled_before_it_ran_counts_as_finished_but_never_as_attempted(fp):
    batch = Batch(members("ok", "ok"), callback=Done)
    [first, second] = fp.insert(batch)

    fp.cancel_job(second.id)
    fp.drain()

    assert fp.get_job(first.id).state == JobState.COMPLETED
    assert fired(fp, batch.batch_id) == Counter(cancelled=1, exhausted=1)


def test_batch_retryable_fires_on_the_first_retry_and_attempted_once_every_member_ran(fp):
    batch = Batch(members("later", "ok", "later"), callback=Done)
    fp.insert(batch)

    fp.drain()

    # Both "later" members wait an hour for their retry: nothing is finished yet.
    assert fired(fp, batch.batch_id) == Counter(retryable=1, attempted=1)
    states = Counter(str(j.state) for j in fp.list_jobs(worker=Member))
    assert states == Counter(retryable=2, completed=1)


def test_batch_exhausted_fires_once_the_last_member_finishes(fp):
    batch = Batch(members("later", "ok"), callback=Done)
    [later, _ok] = fp.insert(batch)
    fp.drain()
    assert "exhausted" not in fired(fp, batch.batch_id)

    fp.retry_job(later.id)
    fp.drain()

    assert fired(fp, batch.batch_id) == Counter(retryable=1, attempted=1, completed=1, exhausted=1)


def test_a_failing_callback_is_retried_like_any_job(fp):
    batch = Batch(members("ok", "ok"), callback=Summary, callback_args={"fail_first": True})
    fp.insert(batch)

    fp.drain()

    [callback] = callback_jobs(fp, batch.batch_id)
    assert callback.state == JobState.COMPLETED
    assert callback.attempt == 2
    assert callback.errors[0]["error"] == "RuntimeError: summary not ready"
    assert callback.max_attempts > 1


# Reading the batch from inside a callback


def test_a_callback_reads_every_member_and_their_recorded_values(fp):
    batch = Batch(members("ok", "ok", "discard", "ok"), callback=Summary)
    saved = fp.insert(batch)

    fp.drain()

    [jobs] = [e[1] for e in CALLS if e[0] == "jobs"]
    [recorded] = [e[1] for e in CALLS if e[0] == "recorded"]
    assert jobs == sorted(
        (j.id, "discarded" if i == 2 else "completed") for i, j in enumerate(saved)
    )
    # n * 10 for each completed member; the discarded one recorded nothing. The first member
    # recorded 0: a falsy value is still a value.
    assert recorded == {saved[0].id: 0, saved[1].id: 10, saved[3].id: 30}


def test_all_recorded_decrypts_the_values_of_an_encrypted_worker(fp):
    batch = Batch([Secret.new({"secret": f"s{i}"}) for i in range(3)], callback=Summary)
    saved = fp.insert(batch)

    fp.drain()

    [recorded] = [e[1] for e in CALLS if e[0] == "recorded"]
    assert recorded == {j.id: {"secret": f"s{i}", "id": j.id} for i, j in enumerate(saved)}
    assert all(b"s0" not in (fp.get_job(j.id).recorded or b"") for j in saved)


def test_batch_helpers_outside_a_running_job_say_where_they_work(fp):
    [job] = fp.insert(Batch(members("ok"), callback=Done))

    with pytest.raises(flowpro.ConfigError, match="inside a running job"):
        Batch.all_jobs(fp.get_job(job.id))
    with pytest.raises(flowpro.GraphError, match="belongs to no batch"):
        Batch.append(fp.insert(Member.new({})))


# Growing a running batch


def test_a_member_adds_members_to_its_running_batch_and_callbacks_wait_for_them(fp):
    batch = Batch([Grower.new({"n": 1, "more": 2}), Grower.new({"n": 2})], name="grow")
    fp.insert(batch)

    fp.drain()

    [(_, added, seen)] = [e for e in CALLS if e[0] == "added"]
    assert len(added) == 2 and seen == 4
    assert all(fp.get_job(i).meta["batch_id"] == batch.batch_id for i in added)
    assert fired(fp, batch.batch_id) == Counter(completed=1)
    assert [e[1] for e in CALLS if e[0] == "grown"] == [[1, 2, 100, 101]]


def test_a_single_member_appended_to_a_batch_joins_it(fp):
    batch = Batch([Grower.new({"n": 1, "more": 1})])
    fp.insert(batch)

    fp.drain()

    assert [e[1] for e in CALLS if e[0] == "grown"] == [[1, 100]]
    assert len(fp.list_jobs(worker=Grower)) == 3  # two members and one callback


def test_appending_to_a_batch_from_outside_uses_the_app(fp):
    [member] = fp.insert(Batch([Grower.new({"n": 1})], batch_id="fixed-id"))

    fp.insert(Batch.append(fp.get_job(member.id)).add(Grower.new({"n": 2})))
    fp.drain()

    assert [e[1] for e in CALLS if e[0] == "grown"] == [[1, 2]]
