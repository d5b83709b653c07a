"""Chunk workers on real databases: size, timeout and partitions honoured, per-job outcomes,
per-job validation and decryption, recorded values per job, and draining."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

import flowpro
from flowpro import Batch, ChunkResult, ChunkWorker
from flowpro.codecs import encrypted as codec
from flowpro.job import Ack, JobState, utcnow
from flowpro.storage.base import Storage
from flowpro.worker import registered_workers
from tests.conftest import eventually
from tests.runtime.nodes import another_app, running
from tests.runtime.pro_helpers import raw_column, set_json

KEY = codec.generate_key()
_lock = threading.Lock()
CHUNKS: list[dict[str, Any]] = []


def seen(worker: str, jobs: list[flowpro.Job], **extra: Any) -> None:
    with _lock:
        CHUNKS.append(
            {
                "worker": worker,
                "ids": [j.id for j in jobs],
                "at": time.monotonic(),
                "thread": threading.get_ident(),
                **extra,
            }
        )


@pytest.fixture(autouse=True)
def _reset():
    CHUNKS.clear()
    yield
    CHUNKS.clear()


def key() -> str:
    return KEY


class Plain(ChunkWorker, queue="chunks", size=10, timeout=0.2):
    def process(self, jobs):
        seen("plain", jobs)


class ByAccount(ChunkWorker, queue="chunks", size=4, timeout=0.2, by=["args.account"]):
    def process(self, jobs):
        seen("account", jobs, keys={j.args["account"] for j in jobs})


class ByRegion(ChunkWorker, queue="chunks", size=4, timeout=0.2, by=["meta.region"]):
    def process(self, jobs):
        seen("region", jobs, keys={j.meta["region"] for j in jobs})


class ByBoth(ChunkWorker, queue="chunks", size=50, timeout=0.2, by=["worker", "args.a", "meta.b"]):
    def process(self, jobs):
        seen("both", jobs, keys={(j.args["a"], j.meta["b"]) for j in jobs})


class Outcomes(ChunkWorker, queue="chunks", size=20, recorded=True, max_attempts=3):
    """Gives each job the outcome its args["do"] names."""

    def process(self, jobs):
        seen("outcomes", jobs)

        def listed(do: str) -> list[flowpro.Job]:
            return [j for j in jobs if j.args["do"] == do]

        return ChunkResult(
            error=("upstream timed out", listed("error")),
            cancel=("account closed", listed("cancel")),
            # Jobs may be listed by id as well as by Job.
            discard=("bad row", [j.id for j in listed("discard")]),
            snooze=(60, listed("snooze")),
            recorded={j.id: {"n": j.args["n"]} for j in jobs if j.args["do"] == "record"},
        )


class Raises(ChunkWorker, queue="chunks", size=10, max_attempts=2):
    def process(self, jobs):
        seen("raises", jobs)
        raise ConnectionError("warehouse unreachable")

    def backoff(self, job):
        return 0


class WrongReturn(ChunkWorker, queue="chunks", size=10, max_attempts=1):
    def process(self, jobs):
        return {"not": "a ChunkResult"}


class Row(BaseModel):
    n: int


class Strict(ChunkWorker, queue="chunks", size=10, structured=Row):
    def process(self, jobs):
        seen("strict", jobs, ns=sorted(j.args.n for j in jobs))


class Sealed(
    ChunkWorker, queue="chunks", size=10, encrypted=dict(key=key), by=["meta.tenant"], recorded=True
):
    def process(self, jobs):
        seen("sealed", jobs, secrets=sorted(j.args["secret"] for j in jobs))
        return ChunkResult(recorded={j.id: j.args["secret"].upper() for j in jobs})


class Slow(ChunkWorker, queue="slowchunks", size=50, timeout=0.6):
    def process(self, jobs):
        seen("slow", jobs)


class Quick(ChunkWorker, queue="quickchunks", size=5, timeout=1.0):
    def process(self, jobs):
        seen("quick", jobs)


class Many(ChunkWorker, queue="many", size=20, timeout=0.1, by=["args.k"]):
    def process(self, jobs):
        seen("many", jobs, keys={j.args["k"] for j in jobs})
        time.sleep(0.005)


class AsyncChunk(ChunkWorker, queue="chunks", size=10, recorded=True):
    async def process(self, jobs):
        seen("async", jobs)
        return ChunkResult(recorded={j.id: j.args["n"] * 2 for j in jobs})


class Notify(ChunkWorker, queue="chunks", size=10):
    """Chunk members of a batch whose callback is the chunk worker itself."""

    def process(self, jobs):
        seen("notify", jobs)

    def batch_completed(self, job):
        seen("notify-completed", [job], batch=job.meta["batch_id"])


def chunks_of(worker: str) -> list[dict[str, Any]]:
    with _lock:
        return [c for c in CHUNKS if c["worker"] == worker]


def states(fp: flowpro.FlowPro, worker: type[flowpro.Worker]) -> Counter[str]:
    return Counter(str(j.state) for j in fp.list_jobs(worker=worker, limit=100_000))


# Size


def test_drain_runs_chunks_of_at_most_size_jobs(fp):
    jobs = fp.insert_all([Plain.new({"n": i}) for i in range(25)])

    outcome = fp.drain()

    assert outcome == {"completed": 25}
    assert [len(c["ids"]) for c in chunks_of("plain")] == [10, 10, 5]
    assert sorted(i for c in chunks_of("plain") for i in c["ids"]) == [j.id for j in jobs]


def test_a_running_node_never_passes_more_than_size_jobs_to_process(fp):
    jobs = fp.insert_all([Many.new({"k": i % 3}) for i in range(230)])

    fp.run(queues={"many": 3}, until_idle=True)

    sizes = [len(c["ids"]) for c in chunks_of("many")]
    assert max(sizes) <= 20
    assert sorted(i for c in chunks_of("many") for i in c["ids"]) == [j.id for j in jobs]
    assert states(fp, Many) == Counter(completed=230)


def test_a_single_chunk_job_inserted_alone_is_processed(fp):
    job = fp.insert(Plain.new({"n": 1}))

    fp.drain()

    assert [c["ids"] for c in chunks_of("plain")] == [[job.id]]
    assert fp.get_job(job.id).state == JobState.COMPLETED


# Timeout


def test_a_partial_chunk_waits_for_the_timeout_then_runs(fp):
    with running(fp, queues={"slowchunks": 2}):
        started = time.monotonic()
        jobs = fp.insert_all([Slow.new({"n": i}) for i in range(3)])
        [chunk] = eventually(lambda: chunks_of("slow"), timeout=10)

    waited = chunk["at"] - started
    assert sorted(chunk["ids"]) == [j.id for j in jobs]  # one chunk, not three
    assert waited >= 0.6, f"ran after {waited:.2f}s, before the 0.6s timeout"
    assert waited < 3.0, f"ran only after {waited:.2f}s"


def test_full_chunks_run_at_once_and_the_rest_after_the_timeout(fp):
    with running(fp, queues={"quickchunks": 3}):
        started = time.monotonic()
        jobs = fp.insert_all([Quick.new({"n": i}) for i in range(12)])
        eventually(lambda: sum(len(c["ids"]) for c in chunks_of("quick")) == 12, timeout=10)

    by_size = sorted(chunks_of("quick"), key=lambda c: -len(c["ids"]))
    assert [len(c["ids"]) for c in by_size] == [5, 5, 2]
    full_at = max(c["at"] for c in by_size[:2]) - started
    rest_at = by_size[2]["at"] - started
    assert full_at < 0.9, f"full chunks waited {full_at:.2f}s"
    assert rest_at >= 1.0, f"the partial chunk ran after {rest_at:.2f}s, before the timeout"
    assert sorted(i for c in by_size for i in c["ids"]) == [j.id for j in jobs]


def test_a_partial_chunk_waits_for_its_timeout_while_another_claim_holds_the_full_one(fp):
    # Two claims at once (two nodes, or a PostgreSQL queue's two producers): the first locks
    # the partition's full chunk; the second must not count those rows as its own and take the
    # two left over as a ready chunk before their timeout.
    import sqlalchemy as sa

    fp.insert_all([Quick.new({"n": i}) for i in range(7)])
    now = utcnow()
    ready_before = now - timedelta(seconds=60)  # nothing has waited a minute
    picked, params = fp.storage._chunk_pick(
        Quick.queue, Quick.__flowpro_name__, 5, ready_before, "first", now
    )
    with fp.storage.engine.connect() as first, first.begin():
        rows = first.execute(sa.text(picked + fp.storage._picked_claim()), params).all()
        assert len(rows) == 5
        if not fp.storage.parallel_claims:
            first.commit()  # SQLite: one writer at a time, so claim after it instead
        assert claim_chunks(fp, Quick, 2, ready_before=ready_before, node="second") == []

    claimed = claim_chunks(fp, Quick, 2, ready_before=utcnow(), node="third")  # due: they run
    assert [len(chunk.ids) for chunk in claimed] == [2]
    assert Counter(str(j.state) for j in fp.list_jobs(worker=Quick)) == Counter(executing=7)


# Partitions


def test_jobs_with_different_args_keys_are_never_in_one_chunk(fp):
    fp.insert_all([ByAccount.new({"account": "abc"[i % 3], "n": i}) for i in range(30)])

    fp.drain()

    chunks = chunks_of("account")
    assert all(len(c["keys"]) == 1 and len(c["ids"]) <= 4 for c in chunks)
    per_key: Counter[str] = Counter()
    for c in chunks:
        per_key[next(iter(c["keys"]))] += len(c["ids"])
    assert per_key == Counter(a=10, b=10, c=10)


def test_jobs_with_different_meta_keys_are_never_in_one_chunk(fp):
    fp.insert_all([ByRegion.new({}, meta={"region": "eu" if i % 2 else "us"}) for i in range(9)])

    fp.drain()

    chunks = chunks_of("region")
    assert all(len(c["keys"]) == 1 for c in chunks)
    assert sorted(len(c["ids"]) for c in chunks) == [1, 4, 4]


def test_partitions_combine_args_and_meta_keys_and_never_mix_workers(fp):
    fp.insert_all(
        [ByBoth.new({"a": i % 2}, meta={"b": i % 3}) for i in range(12)]
        + [Plain.new({"a": 0}, queue="chunks") for _ in range(3)]
    )

    fp.drain()

    both = chunks_of("both")
    assert sorted(next(iter(c["keys"])) for c in both) == [
        (a, b) for a in (0, 1) for b in (0, 1, 2)
    ]
    assert all(len(c["keys"]) == 1 and len(c["ids"]) == 2 for c in both)
    assert [len(c["ids"]) for c in chunks_of("plain")] == [3]


def test_a_full_partition_is_claimed_while_an_older_partial_one_waits_for_its_timeout(fp):
    older = fp.insert_all([ByAccount.new({"account": "a"}) for _ in range(2)])
    full = fp.insert_all([ByAccount.new({"account": "b"}) for _ in range(5)])
    now = utcnow()

    def claim(ready_before: datetime) -> list[flowpro.Job]:
        storage: Storage = fp.storage
        return storage.fetch_chunk(
            "chunks",
            ByAccount.__flowpro_name__,
            size=4,
            ready_before=ready_before,
            node="t",
            now=now,
        )

    first = claim(now - timedelta(seconds=60))  # nothing has waited a minute yet
    second = claim(now - timedelta(seconds=60))
    timed_out = claim(now)

    assert [j.id for j in first] == [j.id for j in full[:4]]
    assert second == []  # one "b" and two "a": neither full nor old enough
    assert [j.id for j in timed_out] == [j.id for j in older]
    assert all(j.state == JobState.EXECUTING and j.attempt == 1 for j in first + timed_out)
    # A claim returns only what it did not set itself; the Jobs are still the rows it wrote.
    assert first + timed_out == [fp.get_job(j.id) for j in first + timed_out]


def test_two_nodes_claiming_chunks_at_once_run_every_job_once_in_unmixed_chunks(fp, db_url):
    other = another_app(db_url)
    jobs = fp.insert_all([Many.new({"k": i % 5}) for i in range(400)])

    try:
        with running(fp, queues={"many": 3}), running(other, queues={"many": 3}):
            eventually(lambda: states(fp, Many) == Counter(completed=400), timeout=60)
    finally:
        other.close()

    chunks = chunks_of("many")
    assert sorted(i for c in chunks for i in c["ids"]) == [j.id for j in jobs]
    assert all(len(c["keys"]) == 1 and len(c["ids"]) <= 20 for c in chunks)


# Outcomes


def test_each_job_of_a_chunk_gets_the_outcome_process_gives_it(fp):
    plan = ["ok", "error", "cancel", "discard", "snooze", "record", "ok", "record"]
    jobs = fp.insert_all([Outcomes.new({"do": do, "n": i}) for i, do in enumerate(plan)])
    now = utcnow()

    fp.drain()

    [chunk] = chunks_of("outcomes")
    assert sorted(chunk["ids"]) == [j.id for j in jobs]
    got = {do: fp.get_job(j.id) for do, j in zip(plan, jobs, strict=False) if do != "ok"}
    ok = [fp.get_job(j.id) for do, j in zip(plan, jobs, strict=True) if do == "ok"]
    assert all(j.state == JobState.COMPLETED and j.errors == [] for j in ok)
    assert got["error"].state == JobState.RETRYABLE
    assert "upstream timed out" in got["error"].errors[-1]["error"]
    assert got["cancel"].state == JobState.CANCELLED
    assert got["cancel"].errors[-1]["error"] == "account closed"
    assert got["discard"].state == JobState.DISCARDED
    assert got["discard"].errors[-1]["error"] == "bad row"
    snoozed = got["snooze"]
    assert snoozed.state == JobState.SCHEDULED and snoozed.errors == []
    assert 55 < (snoozed.scheduled_at - now).total_seconds() < 65
    assert snoozed.max_attempts == Outcomes.max_attempts + 1  # a snooze is not a failure
    records = [j for do, j in zip(plan, jobs, strict=True) if do == "record"]
    assert [Outcomes.fetch_recorded(fp.get_job(j.id)) for j in records] == [{"n": 5}, {"n": 7}]
    assert all(fp.get_job(j.id).state == JobState.COMPLETED for j in records)
    with pytest.raises(flowpro.RecordMissing):
        Outcomes.fetch_recorded(ok[0])


def test_a_raising_process_fails_every_job_of_the_chunk(fp):
    jobs = fp.insert_all([Raises.new({"n": i}) for i in range(4)])

    outcome = fp.drain()

    # Two attempts each (zero backoff), then discarded.
    assert outcome == {"retryable": 4, "discarded": 4}
    assert [len(c["ids"]) for c in chunks_of("raises")] == [4, 4]
    for job in jobs:
        stored = fp.get_job(job.id)
        assert stored.state == JobState.DISCARDED and stored.attempt == 2
        assert [e["error"] for e in stored.errors] == ["ConnectionError: warehouse unreachable"] * 2


def test_a_process_returning_something_else_than_a_chunk_result_fails_the_chunk(fp):
    fp.insert_all([WrongReturn.new({}) for _ in range(3)])

    fp.drain()

    failed = fp.list_jobs(worker=WrongReturn)
    assert all(j.state == JobState.DISCARDED for j in failed)
    assert all("must return None or a ChunkResult" in j.errors[-1]["error"] for j in failed)


def test_an_async_process_runs_and_records_per_job(fp):
    jobs = fp.insert_all([AsyncChunk.new({"n": i}) for i in range(3)])

    fp.drain()

    assert [AsyncChunk.fetch_recorded(fp.get_job(j.id)) for j in jobs] == [0, 2, 4]


# Codecs apply per job


def test_a_job_whose_stored_args_no_longer_validate_is_discarded_alone(fp):
    jobs = fp.insert_all([Strict.new({"n": i}) for i in range(4)])
    set_json(fp, "args", {jobs[2].id: {"n": "not a number"}})

    fp.drain()

    [chunk] = chunks_of("strict")
    assert chunk["ns"] == [0, 1, 3]  # the model instance: dot access
    bad = fp.get_job(jobs[2].id)
    assert bad.state == JobState.DISCARDED
    assert "args are no longer valid" in bad.errors[-1]["error"]
    assert states(fp, Strict) == Counter(completed=3, discarded=1)


def test_an_encrypted_chunk_decrypts_each_job_and_discards_a_tampered_one_alone(fp):
    # Secrets long enough not to turn up in random ciphertext by chance ("s2" did, once).
    secret = [f"ssn-078-05-112{i}" for i in range(4)]
    jobs = fp.insert_all([Sealed.new({"secret": s}, meta={"tenant": "t1"}) for s in secret])
    # Another job's ciphertext is bound to that job's id: it fails authentication here.
    set_json(fp, "args", {jobs[1].id: raw_column(fp, jobs[0].id, "args")})

    fp.drain()

    [chunk] = chunks_of("sealed")
    assert chunk["secrets"] == [secret[0], secret[2], secret[3]]
    tampered = fp.get_job(jobs[1].id)
    assert tampered.state == JobState.DISCARDED
    assert tampered.errors[-1]["error"].startswith("DecryptError")
    assert [Sealed.fetch_recorded(fp.get_job(jobs[i].id)) for i in (0, 2, 3)] == [
        secret[i].upper() for i in (0, 2, 3)
    ]
    stored = json.dumps(raw_column(fp, jobs[2].id, "args"))
    recorded = fp.get_job(jobs[2].id).recorded
    assert secret[2] not in stored and secret[2].upper().encode() not in recorded


def test_an_encrypted_chunk_worker_cannot_partition_by_its_encrypted_args():
    with pytest.raises(flowpro.ConfigError, match="partition by meta keys"):

        class Leaky(ChunkWorker, encrypted=dict(key=key), by=["args.ssn"]):
            def process(self, jobs):
                return None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": 0}, "chunk size"),
        ({"timeout": -1}, "chunk timeout"),
        ({"by": "args.a"}, "must be a list"),
        ({"by": ["args"]}, "must be 'worker', 'args.KEY' or 'meta.KEY'"),
    ],
)
def test_bad_chunk_options_are_refused_when_the_class_is_defined(options, message):
    with pytest.raises(flowpro.ConfigError, match=message):
        type("Bad", (ChunkWorker,), {"process": lambda self, jobs: None}, **options)


# Draining and batches


def test_drain_of_another_queue_leaves_chunks_alone(fp):
    fp.insert_all([Plain.new({}) for _ in range(3)])
    fp.insert(Slow.new({}))

    assert fp.drain(queue="slowchunks") == {"completed": 1}
    assert chunks_of("plain") == []
    assert states(fp, Plain) == Counter(available=3)


def claim_chunks(
    fp: flowpro.FlowPro,
    worker: type[ChunkWorker],
    count: int,
    acks=(),
    *,
    ready_before: datetime | None = None,
    node: str = "t",
) -> list:
    """Claim up to ``count`` chunks of ``worker`` (all ready, unless ``ready_before``)."""
    storage: Storage = fp.storage
    return storage.fetch_chunk_many(
        worker.queue,
        worker.__flowpro_name__,
        size=worker.chunk_size,
        ready_before=ready_before,
        node=node,
        now=utcnow(),
        count=count,
        acks=acks,
    )


def test_a_chunk_claim_writes_the_acks_handed_to_it_in_the_same_transaction(fp):
    # A producer of chunks hands its waiting acks to its next claim: one commit a round.
    # The acks are fenced as always: one of an attempt that was handed back is not applied.
    fp.insert_all([ByAccount.new({"account": "a"}) for _ in range(4)])
    [done] = claim_chunks(fp, ByAccount, 1)
    jobs = done.jobs()
    stale = jobs[0]
    fp.storage.hand_back_jobs("t", [stale.id], now=utcnow())
    more = fp.insert_all([ByAccount.new({"account": "b"}) for _ in range(4)])
    at = utcnow()
    acks = [Ack(j.id, j.attempt, JobState.COMPLETED, at) for j in jobs]

    chunks = claim_chunks(fp, ByAccount, 3, acks)

    assert [fp.get_job(j.id).state for j in jobs[1:]] == [JobState.COMPLETED] * 3
    assert sorted(i for c in chunks for i in c.ids) == sorted([stale.id] + [j.id for j in more])
    assert all(fp.get_job(i).state == JobState.EXECUTING for c in chunks for i in c.ids)


def test_batch_members_acked_by_a_chunk_claim_still_insert_their_callback(fp):
    batch = Batch([Notify.new({"n": i}) for i in range(3)])
    fp.insert(batch)
    [chunk] = claim_chunks(fp, Notify, 1)
    at = utcnow()
    acks = [
        Ack(j.id, j.attempt, JobState.COMPLETED, at, graph=True, batch=True) for j in chunk.jobs()
    ]

    claim_chunks(fp, Notify, 1, acks)

    callbacks = [j for j in fp.list_jobs(worker=Notify) if j.meta.get("callback")]
    assert [(j.meta["callback"], j.state) for j in callbacks] == [("completed", JobState.AVAILABLE)]


def test_a_batch_of_chunk_jobs_runs_its_callback_on_the_chunk_worker(fp):
    batch = Batch([Notify.new({"n": i}) for i in range(5)])
    fp.insert(batch)

    fp.drain()

    assert [len(c["ids"]) for c in chunks_of("notify")] == [5]
    assert [c["batch"] for c in chunks_of("notify-completed")] == [batch.batch_id]
    assert states(fp, Notify) == Counter(completed=6)


def test_chunk_claims_return_each_jobs_json_columns_as_a_read_back_gives_them(fp):
    # PostgreSQL hands a chunk claim's JSON columns over undecoded (the worker thread decodes
    # them): nested, unicode and empty values must come out exactly as stored.
    args = {"account": "a", "nested": {"list": [1, 2.5, None, True], "text": "żółw ✓"}}
    meta = {"region": "eu", "n": [{"x": 1}]}
    saved = fp.insert_all([ByAccount.new(args, meta=meta, tags=["t1", "é"]) for _ in range(3)])
    [chunk] = claim_chunks(fp, ByAccount, 1)

    jobs = chunk.jobs()

    assert sorted(j.id for j in jobs) == sorted(j.id for j in saved)
    assert jobs == [fp.get_job(j.id) for j in jobs]
    assert all(j.args == args and j.meta["region"] == "eu" for j in jobs)
    assert all(j.tags == ["t1", "é"] and j.errors == [] for j in jobs)


def test_a_failed_chunk_claim_writes_nothing_and_its_acks_wait_for_the_next_round(fp, monkeypatch):
    # A producer writes its waiting acks in the transaction of its next chunk claim. When that
    # call fails, nothing of it is written: the acks wait again, in order, and the next round
    # writes them with its claim.
    from flowpro._runtime.producer import Producer

    fp.insert_all([Plain.new({"i": i}) for i in range(40)])
    jobs = [j for chunk in claim_chunks(fp, Plain, 2) for j in chunk.jobs()]
    acks = [Ack(j.id, j.attempt, JobState.COMPLETED, utcnow()) for j in jobs]
    producer = Producer(
        fp.storage, queue="chunks", limit=4, node="t", poll_interval=1.0, clock=utcnow
    )
    producer._acks = list(acks)
    real = fp.storage.fetch_chunk_many

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("connection lost")

    monkeypatch.setattr(fp.storage, "fetch_chunk_many", failing)
    try:
        with pytest.raises(RuntimeError, match="connection lost"):
            producer._claim_chunks(2)
        state = {j.id: j.state for j in fp.list_jobs(limit=100)}
        assert producer._acks == acks and producer.held()[1] is None
        assert all(state[a.id] is JobState.EXECUTING for a in acks)
        assert Counter(state.values()) == Counter(executing=20, available=20)

        monkeypatch.setattr(fp.storage, "fetch_chunk_many", real)
        assert producer._claim_chunks(2) == 2
        state = {j.id: j.state for j in fp.list_jobs(limit=100)}
        # (The acks waiting now are the new chunks', which run at once.)
        assert not {a.id for a in producer._acks} & {a.id for a in acks}
        assert all(state[a.id] is JobState.COMPLETED for a in acks)
        assert Counter(state.values()) == Counter(completed=20, executing=20)
        eventually(lambda: not producer._running, timeout=10)
    finally:
        producer.executor.shutdown()


def test_an_idle_chunk_queue_polls_with_a_read_not_a_claim_per_chunk_worker(fp, monkeypatch):
    # Polls retry chunk claims (a partial chunk becomes ready at its timeout, unannounced), but
    # only when the queue has an available job: on an empty queue a claim transaction per
    # chunk worker at every poll kept the producers busy, so that run(until_idle=True) could
    # wait seconds for a moment with no call in flight.
    claims: list[str] = []
    real = fp.storage.fetch_chunk_many

    def spy(*args: Any, **kwargs: Any) -> Any:
        claims.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(fp.storage, "fetch_chunk_many", spy)
    with running(fp, queues={"chunks": 4}):
        time.sleep(0.3)  # 15 polls at FAST's 0.02 s
        idle_claims = len(claims)
        fp.insert_all([Plain.new({"i": i}) for i in range(5)])  # a partial chunk
        eventually(lambda: states(fp, Plain) == Counter(completed=5), timeout=10)

    # The first round of each producer tries every chunk worker of the queue once; then
    # nothing until jobs arrive.
    workers = [c for c in registered_workers() if c.is_chunk and c.queue == "chunks"]
    assert idle_claims <= 2 * len(workers)
    assert [len(c["ids"]) for c in chunks_of("plain")] == [5]


def test_a_chunk_queue_runs_two_producers_where_two_connections_claim_side_by_side(fp):
    # On PostgreSQL (SKIP LOCKED) a node runs a queue of chunk workers with two producers that
    # share its slots, each with its own connection; both claim chunks. Plain queues, and every
    # queue on SQLite (one writer at a time), keep one producer.
    from flowpro._runtime.node import Node, NodeConfig

    node = Node(fp.storage, queues={"chunks": 10, "plain-only": 4}, config=NodeConfig())
    lanes = {
        q: sorted((p._thread.name, p.limit) for p in node.producers if p.queue == q)
        for q in ("chunks", "plain-only")
    }
    two = fp.storage.parallel_claims
    assert lanes["chunks"] == (
        [("flowpro-chunks", 5), ("flowpro-chunks-2", 5)] if two else [("flowpro-chunks", 10)]
    )
    assert lanes["plain-only"] == [("flowpro-plain-only", 4)]
    for producer in node.producers:
        producer.executor.shutdown()

    claimers: set[str] = set()
    real = fp.storage.fetch_chunk_many

    def spy(*args: Any, **kwargs: Any) -> Any:
        chunks = real(*args, **kwargs)
        if chunks:
            claimers.add(threading.current_thread().name)
        return chunks

    fp.storage.fetch_chunk_many = spy  # type: ignore[method-assign]
    try:
        fp.insert_all([Plain.new({"i": i}) for i in range(1_000)])
        fp.run(queues={"chunks": 4}, until_idle=True)
    finally:
        del fp.storage.fetch_chunk_many
    assert states(fp, Plain) == Counter(completed=1_000)
    assert sum(len(c["ids"]) for c in CHUNKS) == 1_000
    assert claimers == ({"flowpro-chunks", "flowpro-chunks-2"} if two else {"flowpro-chunks"})
