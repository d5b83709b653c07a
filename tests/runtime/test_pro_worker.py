"""Pro workers on real databases: structured args, recorded output, bad input, hooks,
deadlines and aliases. Encryption is in test_pro_encrypted.py."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, field_validator

import flowpro
from flowpro.job import utcnow
from flowpro.worker import resolve_worker
from tests.conftest import eventually
from tests.runtime.pro_helpers import count_rows, raw_column, set_json

seen: list[Any] = []
hook_calls: list[tuple[Any, ...]] = []


@pytest.fixture(autouse=True)
def _clear():
    seen.clear()
    hook_calls.clear()
    yield
    seen.clear()
    hook_calls.clear()


class Point(BaseModel):
    x: int
    y: int = 0
    label: str | None = None


class Plot(flowpro.Worker, queue="pro", structured=Point, recorded=True, max_attempts=1):
    def process(self, job):
        seen.append(job.args)
        return {"sum": job.args.x + job.args.y, "label": job.args.label}


class Legacy(
    flowpro.Worker,
    queue="pro",
    structured=dict(keys=["a", "b", "c"], required=["a", "c"]),
    recorded=True,
    max_attempts=1,
):
    def process(self, job):
        seen.append(job.args)
        return [job.args.a, job.args.b, job.args.c]


class Plain(flowpro.Worker, queue="pro"):
    def process(self, job):
        seen.append(job.args)


def random_text(chars: int, seed: int = 7) -> str:
    """Incompressible-ish text: Base64 of random bytes (about 6 bits of entropy per char)."""
    rng = random.Random(seed)
    return base64.b64encode(rng.randbytes(chars * 3 // 4 + 3)).decode()[:chars]


# Structured


def test_a_structured_worker_sees_its_pydantic_model_with_dot_access(fp):
    by_dict = fp.insert(Plot.new({"x": 2, "y": 3}))
    by_model = fp.insert(Plot.new(Point(x=5, label="five")))

    assert fp.drain() == {"completed": 2}

    assert [type(args) for args in seen] == [Point, Point]
    assert Plot.fetch_recorded(fp.get_job(by_dict.id)) == {"sum": 5, "label": None}
    assert Plot.fetch_recorded(fp.get_job(by_model.id)) == {"sum": 5, "label": "five"}
    # Stored as the model's JSON dump, defaults included.
    assert raw_column(fp, by_model.id, "args") == {"x": 5, "y": 0, "label": "five"}
    assert fp.get_job(by_dict.id).args == {"x": 2, "y": 3, "label": None}


def test_a_structured_worker_of_the_dict_form_sees_every_key_with_none_for_missing_ones(fp):
    job = fp.insert(Legacy.new({"a": 1, "c": {"deep": [1, 2]}}))

    fp.drain()

    assert Legacy.fetch_recorded(fp.get_job(job.id)) == [1, None, {"deep": [1, 2]}]
    assert seen[0].a == 1 and seen[0].b is None


def test_invalid_structured_args_raise_one_args_error_listing_every_problem(fp):
    with pytest.raises(flowpro.ArgsError) as model_error:
        fp.insert(Plot.new({"x": "not a number", "yy": 1, "z": 2}))
    with pytest.raises(flowpro.ArgsError) as dict_error:
        fp.insert(Legacy.new({"b": 1, "d": 2}))

    message = str(model_error.value)
    assert "key 'x'" in message and "valid integer" in message
    assert "unknown key 'yy' (typo? did you mean 'y'?)" in message
    assert "unknown key 'z'" in message
    message = str(dict_error.value)
    assert "missing required key 'a'" in message and "missing required key 'c'" in message
    assert "unknown key 'd'" in message
    assert count_rows(fp) == 0


def test_insert_all_with_one_invalid_structured_job_inserts_none_of_them(fp):
    def jobs():
        yield Plot.new({"x": 1})
        yield Legacy.new({"a": 1, "c": 2})
        yield Plot.new({"x": 3, "typo": 1})

    with pytest.raises(flowpro.ArgsError, match="unknown key 'typo'"):
        fp.insert_all(jobs())

    assert count_rows(fp) == 0
    assert fp.list_jobs() == []


def test_args_edited_in_the_database_that_no_longer_validate_discard_the_job_unrun(fp):
    bad_type = fp.insert(Plot.new({"x": 1}))
    unknown = fp.insert(Legacy.new({"a": 1, "c": 2}))
    missing = fp.insert(Legacy.new({"a": 1, "c": 2}))
    set_json(
        fp,
        "args",
        {
            bad_type.id: {"x": "seven", "y": 0, "label": None},
            unknown.id: {"a": 1, "c": 2, "extra": True},
            missing.id: {"a": 1},
        },
    )

    assert fp.drain() == {"discarded": 3}

    assert seen == []
    errors = {job_id: fp.get_job(job_id).errors for job_id in (bad_type.id, unknown.id, missing.id)}
    assert all(len(entries) == 1 for entries in errors.values())
    assert all(entries[0]["kind"] == "args" for entries in errors.values())
    assert errors[bad_type.id][0]["error"].startswith(
        "args are no longer valid: invalid args for Point: key 'x'"
    )
    assert "unknown key 'extra'" in errors[unknown.id][0]["error"]
    assert "missing required key 'c'" in errors[missing.id][0]["error"]
    assert fp.get_job(bad_type.id).attempt == 1  # one attempt, no retry: it cannot help


def test_a_job_whose_model_changed_since_insert_is_discarded_with_the_new_problem(fp):
    class V1(BaseModel):
        email: str

    class SendV1(flowpro.Worker, name="mail.Send", structured=V1, max_attempts=5):
        def process(self, job):
            seen.append("v1")

    job = fp.insert(SendV1.new({"email": "a@example.com"}))

    class V2(BaseModel):
        email: str
        locale: str  # a new required field, deployed while the job waited

    class SendV2(flowpro.Worker, name="mail.Send", structured=V2, max_attempts=5):
        def process(self, job):
            seen.append("v2")

    assert fp.drain() == {"discarded": 1}

    saved = fp.get_job(job.id)
    assert seen == []
    assert saved.attempt == 1
    assert "invalid args for V2: missing required key 'locale'" in saved.errors[0]["error"]


class Picky(BaseModel):
    code: str

    @field_validator("code")
    @classmethod
    def no_magic(cls, value: str) -> str:
        if value == "magic":
            raise LookupError("a validator bug")  # not a ValueError: pydantic lets it through
        return value


class PickyWorker(flowpro.Worker, queue="pro", structured=Picky, max_attempts=1):
    def process(self, job):
        seen.append(job.args.code)


def test_a_validator_raising_at_run_time_fails_the_attempt_instead_of_the_drain(fp):
    broken = fp.insert(PickyWorker.new({"code": "plain"}))
    fp.insert(PickyWorker.new({"code": "fine"}))
    set_json(fp, "args", {broken.id: {"code": "magic"}})

    assert fp.drain() == {"discarded": 1, "completed": 1}

    assert seen == ["fine"]
    assert fp.get_job(broken.id).errors[0]["error"] == "LookupError: a validator bug"


def test_required_keys_must_be_a_subset_of_keys_when_the_class_is_defined():
    with pytest.raises(flowpro.ConfigError, match=r"required key 'c' is not in keys \['a'\]"):

        class Broken(flowpro.Worker, structured=dict(keys=["a"], required=["a", "c"])):
            pass

    with pytest.raises(flowpro.ConfigError, match="needs 'keys'"):

        class NoKeys(flowpro.Worker, structured=dict(required=["a"])):
            pass


# Recorded


class Report(flowpro.Worker, queue="pro", recorded=True, max_attempts=1):
    def process(self, job):
        return job.args.get("value")


class BigReport(flowpro.Worker, queue="pro", recorded=dict(limit=64_000), max_attempts=1):
    def process(self, job):
        return random_text(job.args["chars"])


class RandomReport(flowpro.Worker, queue="pro", recorded=True, max_attempts=3):
    """Returns random text of args["chars"] characters until attempt args["small_on"]."""

    def backoff(self, job):
        return 0

    def process(self, job):
        seen.append(job.attempt)
        if job.attempt == job.args.get("small_on"):
            return "small"
        return random_text(job.args["chars"], seed=job.attempt)


def test_a_recorded_return_value_is_stored_compressed_and_fetched_back(fp):
    value = {
        "rows": [1, 2.5, None, True] * 10,
        "name": "Zoë ✓",
        "nested": {"a": [{"b": "c"}]},
    }
    job = fp.insert(Report.new({"value": value}))

    fp.drain()

    saved = fp.get_job(job.id)
    assert saved.state == "completed"
    assert Report.fetch_recorded(saved) == value
    stored = raw_column(fp, job.id, "recorded")
    assert stored[:1] == b"\x01" and stored[1:5] == b"\x28\xb5\x2f\xfd"  # version, zstd magic


def test_a_short_recorded_value_is_stored_uncompressed_with_its_checksum(fp):
    job = fp.insert(Report.new({"value": {"ok": True}}))

    fp.drain()

    assert Report.fetch_recorded(fp.get_job(job.id)) == {"ok": True}
    stored = raw_column(fp, job.id, "recorded")
    assert stored[:1] == b"\x02" and stored[5:] == b'{"ok":true}'


def test_returning_none_records_nothing(fp):
    job = fp.insert(Report.new({}))

    fp.drain()

    saved = fp.get_job(job.id)
    assert saved.state == "completed" and saved.recorded is None
    with pytest.raises(flowpro.RecordMissing, match=f"job {job.id} has no recorded output"):
        Report.fetch_recorded(saved)


def test_fetch_recorded_raises_record_missing_before_the_job_ran(fp):
    job = fp.insert(Report.new({"value": 1}))

    with pytest.raises(LookupError, match=r"has no recorded output \(state available\)"):
        Report.fetch_recorded(fp.get_job(job.id))
    with pytest.raises(flowpro.RecordMissing):
        Report.fetch_recorded(fp.get_job(job.id + 1000))  # no such job: get_job is None


def test_a_limit_of_64000_records_output_that_the_default_limit_refuses(fp):
    chars = 50_000  # about 37,500 bytes compressed: between the two limits
    big = fp.insert(BigReport.new({"chars": chars}))
    default = fp.insert(RandomReport.new({"chars": chars}, max_attempts=1))

    assert fp.drain() == {"completed": 1, "discarded": 1}

    assert BigReport.fetch_recorded(fp.get_job(big.id)) == random_text(chars)
    stored = len(raw_column(fp, big.id, "recorded"))
    assert 32_000 < stored <= 64_000
    assert "RecordTooLarge" in fp.get_job(default.id).errors[0]["error"]


def test_100_kb_of_compressible_output_fits_the_default_limit(fp):
    rows = [{"id": i, "status": "ok", "email": f"user{i}@example.com"} for i in range(2_400)]
    assert len(json.dumps(rows)) > 100_000
    job = fp.insert(Report.new({"value": rows}))

    assert fp.drain() == {"completed": 1}

    assert Report.fetch_recorded(fp.get_job(job.id)) == rows
    assert len(raw_column(fp, job.id, "recorded")) < 32_000


def test_80_kb_of_random_output_fails_the_attempt_with_record_too_large_and_stores_nothing(fp):
    job = fp.insert(RandomReport.new({"chars": 80_000}))

    assert fp.drain() == {"retryable": 2, "discarded": 1}

    saved = fp.get_job(job.id)
    assert seen == [1, 2, 3]  # normal retry rules: every attempt ran
    assert saved.state == "discarded" and saved.attempt == 3
    assert saved.recorded is None and raw_column(fp, job.id, "recorded") is None
    assert len(saved.errors) == 3
    for entry in saved.errors:
        assert entry["error"].startswith("RecordTooLarge: recorded output is ")
        stored, json_size = _sizes(entry["error"])
        assert stored > 32_000 and json_size > 80_000
        assert "the limit is 32000 bytes" in entry["error"]
    with pytest.raises(flowpro.RecordMissing):
        RandomReport.fetch_recorded(saved)


def test_a_retry_after_record_too_large_records_the_later_smaller_value(fp):
    job = fp.insert(RandomReport.new({"chars": 80_000, "small_on": 2}))

    assert fp.drain() == {"retryable": 1, "completed": 1}

    saved = fp.get_job(job.id)
    assert RandomReport.fetch_recorded(saved) == "small"
    assert [entry["attempt"] for entry in saved.errors] == [1]


def _sizes(message: str) -> tuple[int, int]:
    # "recorded output is N bytes after compression and encoding (M bytes of JSON); ..."
    words = message.replace("(", " ").split()
    return int(words[words.index("is") + 1]), int(words[words.index("of") - 2])


# Bad input: a clear error at insert, nothing written, the same on both backends


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    inner = value
    for _ in range(levels - 1):
        inner["x"] = {}
        inner = inner["x"]
    return value


BAD_ARGS = [
    pytest.param({"tags": {"a", "b"}}, "a value of type set", id="set"),
    pytest.param({"blob": b"\x00\x01"}, "a value of type bytes", id="bytes"),
    pytest.param({"ratio": math.nan}, "not JSON-serialisable", id="nan"),
    pytest.param({"ratio": math.inf}, "not JSON-serialisable", id="infinity"),
    pytest.param({"name": "a\u0000b"}, r"NUL character \(\\u0000\)", id="nul-in-value"),
    pytest.param({"a\u0000": 1}, r"NUL character \(\\u0000\)", id="nul-in-key"),
    pytest.param({"s": "\ud800"}, "unpaired surrogate", id="lone-surrogate"),
    pytest.param({1: "one"}, "keys must be strings", id="int-key"),
    pytest.param(_deep(10_000), r"nested too deeply \(more than 200 levels\)", id="deep-10000"),
    pytest.param(_deep(300), r"nested too deeply \(more than 200 levels\)", id="deep-300"),
    pytest.param({"blob": "x" * 1_000_000}, "args are 1000011 bytes of JSON; the limit is 1000000",
                 id="oversized"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD_ARGS)
def test_bad_args_fail_at_insert_with_a_clear_error_and_write_nothing(fp, args, message):
    with pytest.raises(flowpro.ArgsError, match=message):
        fp.insert(Plain.new(args))
    with pytest.raises(flowpro.ArgsError, match=message):
        fp.insert_all([Plain.new({"ok": 1}), Plain.new(args)])

    assert count_rows(fp) == 0


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"trace": "a\u0000b"}, r"meta contain the NUL character"),
        ({"at": datetime(2024, 1, 1)}, "meta are not JSON-serialisable"),
        (_deep(500), r"meta are nested too deeply"),
    ],
    ids=["nul", "datetime", "deep"],
)
def test_bad_meta_fails_at_insert_and_writes_nothing(fp, meta, message):
    with pytest.raises(flowpro.ArgsError, match=message):
        fp.insert(Plain.new({}, meta=meta))

    assert count_rows(fp) == 0


def test_the_deepest_args_allowed_are_stored_and_read_back_on_both_backends(fp):
    deepest = _deep(200)
    job = fp.insert(Plain.new(deepest))

    assert fp.drain() == {"completed": 1}

    assert fp.get_job(job.id).args == deepest
    assert seen == [deepest]


def test_structured_workers_refuse_the_same_bad_input_at_insert(fp):
    for args, message in [
        ({"a": {1, 2}, "c": 1}, "key 'a': input was not a valid JSON value"),
        ({"a": math.nan, "c": 1}, "key 'a': contains a non-finite number"),
        ({"a": "\u0000", "c": 1}, "NUL character"),
        ({"a": _deep(10_000), "c": 1}, "key 'a': nested too deeply"),
        ({"a": "x" * 1_000_000, "c": 1}, "the limit is 1000000"),
    ]:
        with pytest.raises(flowpro.ArgsError, match=message):
            fp.insert(Legacy.new(args))

    assert count_rows(fp) == 0


def test_max_args_bytes_sets_a_lower_cap_per_worker(fp):
    class Small(flowpro.Worker, max_args_bytes=100):
        def process(self, job):
            return None

    fp.insert(Small.new({"s": "x" * 80}))
    with pytest.raises(flowpro.ArgsError, match="args are 108 bytes of JSON; the limit is 100"):
        fp.insert(Small.new({"s": "x" * 100}))

    assert count_rows(fp) == 1


class Noisy(flowpro.Worker, queue="pro", max_attempts=1):
    def process(self, job):
        kind = job.args["kind"]
        if kind == "raise":
            raise RuntimeError("bad \x00 byte and \udc80 surrogate")
        if kind == "cancel":
            return flowpro.Cancel("reason with \x00")
        return flowpro.Discard("reason with \ud800")


def test_error_messages_with_nul_or_lone_surrogates_are_stored_on_both_backends(fp):
    jobs = [fp.insert(Noisy.new({"kind": kind})) for kind in ("raise", "cancel", "discard")]

    assert fp.drain() == {"discarded": 2, "cancelled": 1}

    errors = [fp.get_job(job.id).errors[0]["error"] for job in jobs]
    assert errors == [
        "RuntimeError: bad \\x00 byte and \\udc80 surrogate",
        "reason with \\x00",
        "reason with \\ud800",
    ]


# A property on a real database: whatever JSON args go in come out unchanged.

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    # PostgreSQL's jsonb keeps numbers as numeric: 1e16 and up come back as int there.
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
    | st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


class Echo(flowpro.Worker, queue="echo", recorded=True, max_attempts=1):
    def process(self, job):
        return job.args


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(args=st.dictionaries(st.text(max_size=8).filter(lambda k: "\x00" not in k), json_values))
def test_any_json_args_survive_insert_storage_and_recording_unchanged(fp, args):
    try:
        args_json = flowpro.job.encode_json(args)
    except flowpro.ArgsError:
        return  # e.g. a lone surrogate in a key: refused at insert, covered above
    job = fp.insert(Echo.new(args))

    fp.drain("echo")

    saved = fp.get_job(job.id)
    assert saved.args == json.loads(args_json)
    assert Echo.fetch_recorded(saved) == json.loads(args_json)


# Hooks


class Hooked(
    flowpro.Worker,
    queue="hooks",
    max_attempts=2,
    structured=dict(keys=["do"], required=["do"]),
):
    def backoff(self, job):
        return 0

    def before_process(self, job):
        hook_calls.append(("before", job.args.do, job.attempt, type(job.args).__name__))
        if job.args.do == "before-raises":
            raise ValueError("refused in before_process")

    def process(self, job):
        do = job.args.do
        hook_calls.append(("process", do, job.attempt))
        if do == "cancel":
            return flowpro.Cancel("stop it")
        if do == "discard":
            return flowpro.Discard("give up")
        if do == "raise":
            raise ValueError("boom")
        return "fine"

    def after_process(self, state, job, result):
        shown = type(result).__name__ if isinstance(result, BaseException) else result
        do = job.args.do if hasattr(job.args, "do") else job.args["do"]
        hook_calls.append(("after", do, str(state), shown))

    def on_cancelled(self, job, reason):
        do = job.args.do if hasattr(job.args, "do") else job.args["do"]
        hook_calls.append(("cancelled", do, reason))

    def on_discarded(self, job, reason):
        do = job.args.do if hasattr(job.args, "do") else job.args["do"]
        hook_calls.append(("discarded", do, reason))


def _calls(do: str) -> list[tuple[Any, ...]]:
    return [call[:1] + call[2:] for call in hook_calls if call[1] == do]


def test_hooks_see_each_outcome_with_its_state_result_and_reason(fp):
    for do in ("ok", "cancel", "discard", "raise", "before-raises"):
        fp.insert(Hooked.new({"do": do}))

    fp.drain("hooks")

    assert _calls("ok") == [
        ("before", 1, "HookedArgs"),  # structured: the hook sees the model instance too
        ("process", 1),
        ("after", "completed", "fine"),
    ]
    assert _calls("cancel") == [
        ("before", 1, "HookedArgs"),
        ("process", 1),
        ("after", "cancelled", flowpro.Cancel("stop it")),
        ("cancelled", "stop it"),
    ]
    assert _calls("discard") == [
        ("before", 1, "HookedArgs"),
        ("process", 1),
        ("after", "discarded", flowpro.Discard("give up")),
        ("discarded", "give up"),
    ]
    assert _calls("raise") == [
        ("before", 1, "HookedArgs"),
        ("process", 1),
        ("after", "retryable", "ValueError"),
        ("before", 2, "HookedArgs"),
        ("process", 2),
        ("after", "discarded", "ValueError"),
        ("discarded", "ValueError: boom"),
    ]
    assert _calls("before-raises") == [  # like process raising; process never runs
        ("before", 1, "HookedArgs"),
        ("after", "retryable", "ValueError"),
        ("before", 2, "HookedArgs"),
        ("after", "discarded", "ValueError"),
        ("discarded", "ValueError: refused in before_process"),
    ]


def test_hooks_run_when_flowpro_ends_a_job_before_process(fp):
    bad = fp.insert(Hooked.new({"do": "ok"}))
    set_json(fp, "args", {bad.id: {"do": "ok", "typo": 1}})

    fp.drain("hooks")

    assert [call[0] for call in hook_calls] == ["after", "discarded"]
    assert hook_calls[0][2] == "discarded" and hook_calls[0][3] is None
    assert hook_calls[1][2].startswith("args are no longer valid: invalid args for HookedArgs")


class BrokenHooks(flowpro.Worker, queue="hooks"):
    def process(self, job):
        return "done"

    def after_process(self, state, job, result):
        raise RuntimeError("hook bug")


def test_a_failing_after_process_hook_is_logged_and_changes_nothing(fp, caplog):
    job = fp.insert(BrokenHooks.new({}))

    with caplog.at_level(logging.WARNING, logger="flowpro"):
        fp.drain("hooks")

    assert fp.get_job(job.id).state == "completed"
    assert "a hook of tests.runtime.test_pro_worker.BrokenHooks failed: RuntimeError: hook bug" in (
        caplog.text
    )


# Deadlines


class Timely(flowpro.Worker, queue="deadline", deadline=60):
    def process(self, job):
        seen.append(job.id)

    def on_cancelled(self, job, reason):
        hook_calls.append(("cancelled", job.id, reason))


class Hasty(Timely, deadline=0.001):
    pass


def test_a_deadline_is_stored_in_meta_from_when_the_job_may_run(fp):
    before = utcnow()
    now_job = fp.insert(Timely.new({}))
    later_job = fp.insert(Timely.new({}, schedule_in=3600))

    deadline = datetime.fromisoformat(now_job.meta["deadline_at"])
    later = datetime.fromisoformat(fp.get_job(later_job.id).meta["deadline_at"])
    assert before + timedelta(seconds=60) <= deadline <= utcnow() + timedelta(seconds=60)
    assert abs((later - deadline).total_seconds() - 3600) < 1


def test_a_job_before_its_deadline_runs(fp):
    job = fp.insert(Timely.new({}))

    assert fp.drain("deadline") == {"completed": 1}

    assert seen == [job.id]


def test_a_job_past_its_deadline_is_cancelled_instead_of_started(fp):
    job = fp.insert(Hasty.new({}))
    deadline = datetime.fromisoformat(job.meta["deadline_at"])
    eventually(lambda: utcnow() > deadline, timeout=1)

    assert fp.drain("deadline") == {"cancelled": 1}

    saved = fp.get_job(job.id)
    assert seen == []
    assert saved.state == "cancelled" and saved.cancelled_at is not None
    assert saved.errors[0]["kind"] == "deadline"
    assert saved.errors[0]["error"] == (
        f"deadline {deadline.isoformat()} passed before the job could start"
    )
    assert hook_calls == [("cancelled", job.id, saved.errors[0]["error"])]


def test_a_node_cancels_jobs_past_their_deadline_too(fp):
    late = fp.insert(Hasty.new({}))
    fine = fp.insert(Timely.new({}))
    eventually(lambda: utcnow() > datetime.fromisoformat(late.meta["deadline_at"]), timeout=1)

    fp.run(queues={"deadline": 2}, until_idle=True)

    assert fp.get_job(late.id).state == "cancelled"
    assert fp.get_job(fine.id).state == "completed"
    assert seen == [fine.id]


# Aliases


def test_an_alias_resolves_jobs_inserted_under_the_old_worker_name(fp):
    class Charge(flowpro.Worker, queue="alias", name="billing.Charge"):
        def process(self, job):
            seen.append((type(self).__name__, job.args["cents"]))

    # A job written by the old release, whose worker was called billing.LegacyCharge.
    old = fp.insert(dataclasses.replace(Charge.new({"cents": 250}), worker="billing.LegacyCharge"))
    unknown = fp.insert(dataclasses.replace(Charge.new({"cents": 1}), worker="billing.Gone"))

    class Renamed(
        flowpro.Worker, queue="alias", name="billing.Charge", aliases=["billing.LegacyCharge"]
    ):
        def process(self, job):
            seen.append((type(self).__name__, job.args["cents"]))

    assert fp.drain("alias") == {"completed": 1, "discarded": 1}

    assert resolve_worker("billing.LegacyCharge") is Renamed
    assert seen == [("Renamed", 250)]
    assert fp.get_job(old.id).state == "completed"
    assert "'billing.Gone' is not registered" in fp.get_job(unknown.id).errors[0]["error"]
