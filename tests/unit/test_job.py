"""The job model: states, the strict JSON codec, unsaved and saved jobs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

import flowpro
from flowpro.job import TERMINAL_STATES, Job, JobState, NewJob, encode_json


def test_job_states_are_the_eight_lifecycle_states_and_compare_as_strings():
    assert {s.value for s in JobState} == {
        "scheduled",
        "available",
        "executing",
        "retryable",
        "completed",
        "discarded",
        "cancelled",
        "suspended",
    }
    assert JobState("completed") is JobState.COMPLETED
    assert JobState.COMPLETED == "completed"
    assert str(JobState.RETRYABLE) == "retryable"
    assert f"{JobState.AVAILABLE}" == "available"


def test_only_completed_discarded_and_cancelled_are_terminal():
    assert frozenset({"completed", "discarded", "cancelled"}) == TERMINAL_STATES


def test_unknown_state_names_are_refused():
    with pytest.raises(ValueError, match="finished"):
        JobState("finished")


# encode_json


def test_encode_json_writes_compact_json_that_decodes_to_the_same_value():
    value = {"a": 1, "b": [1, 2.5, None, True], "c": {"d": "é😀"}}

    text = encode_json(value)

    assert " " not in text
    assert json.loads(text) == value


def test_encode_json_writes_tuples_as_lists():
    assert encode_json({"t": (1, (2, 3))}) == '{"t":[1,[2,3]]}'


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"s": {1, 2}}, "set"),
        ({"s": frozenset()}, "frozenset"),
        ({"b": b"raw"}, "bytes"),
        ({"d": datetime(2024, 1, 1, tzinfo=UTC)}, "datetime"),
        ({"o": object()}, "object"),
        ([{"nested": {"deep": {1.5j}}}], "set"),
    ],
)
def test_encode_json_refuses_values_that_are_not_json_naming_their_type(value, named):
    with pytest.raises(flowpro.ArgsError, match=f"not JSON-serialisable.*{named}"):
        encode_json(value)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_encode_json_refuses_non_finite_numbers(number):
    with pytest.raises(flowpro.ArgsError, match="not JSON-serialisable"):
        encode_json({"x": [1, {"y": number}]})


@pytest.mark.parametrize(
    "value",
    [
        {1: "one"},
        {"nested": {2: "two"}},
        {"in_list": [{"ok": 1}, {None: "null"}]},
        {"deep": {"deeper": {True: "bool"}}},
        {"float": {1.5: "x"}},
        {"tuple": {(1, 2): "x"}},
    ],
)
def test_encode_json_refuses_non_string_keys_at_any_depth(value):
    # json.dumps would silently turn 1, None and True into "1", "null" and "true".
    with pytest.raises(flowpro.ArgsError, match=r"keys must be strings|not JSON-serialisable"):
        encode_json(value)


def test_encode_json_refuses_the_nul_character_which_postgresql_cannot_store():
    with pytest.raises(flowpro.ArgsError, match="NUL"):
        encode_json({"text": "before\x00after"})
    with pytest.raises(flowpro.ArgsError, match="NUL"):
        encode_json({"key\x00": 1})
    with pytest.raises(flowpro.ArgsError, match="NUL"):
        encode_json({"text": "\\\x00"})


def test_encode_json_accepts_a_literal_backslash_u0000_which_is_not_a_nul():
    value = {"pattern": "\\u0000", "path": "C:\\\\u0000"}

    assert json.loads(encode_json(value)) == value


def test_encode_json_refuses_unpaired_surrogates_but_accepts_paired_ones():
    with pytest.raises(flowpro.ArgsError, match="surrogate"):
        encode_json({"s": "\ud800"})
    with pytest.raises(flowpro.ArgsError, match="surrogate"):
        encode_json({"s": "x\udc00y"})

    assert json.loads(encode_json({"s": "😀 \\ud800"})) == {"s": "😀 \\ud800"}


def test_encode_json_refuses_values_nested_too_deeply_with_an_args_error():
    value: dict = {}
    inner = value
    for _ in range(5_000):
        inner["a"] = {}
        inner = inner["a"]

    with pytest.raises(flowpro.ArgsError, match="nested too deeply"):
        encode_json(value)


def test_encode_json_names_what_it_encodes_in_its_errors():
    with pytest.raises(flowpro.ArgsError, match=r"^meta are not JSON-serialisable"):
        encode_json({"s": {1}}, what="meta")
    with pytest.raises(flowpro.ArgsError, match=r"^meta keys must be strings"):
        encode_json({"s": {1: 2}}, what="meta")


def test_args_error_is_a_codec_error_and_a_value_error():
    assert issubclass(flowpro.ArgsError, flowpro.CodecError)
    assert issubclass(flowpro.ArgsError, ValueError)
    assert issubclass(flowpro.CodecError, flowpro.FlowproError)
    assert issubclass(flowpro.RecordMissing, LookupError)


# Saved and unsaved jobs


def _job(**fields) -> Job:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    base = dict(
        id=7,
        state=JobState.COMPLETED,
        queue="etl",
        worker="app.Fetch",
        args={"url": "https://x"},
        meta={"k": "v"},
        tags=["a"],
        errors=[{"attempt": 1, "at": at.isoformat(), "kind": "error", "error": "boom"}],
        attempt=2,
        max_attempts=5,
        priority=3,
        attempted_by="node-1",
        inserted_at=at,
        scheduled_at=at,
        attempted_at=at + timedelta(seconds=1),
        completed_at=at + timedelta(seconds=2),
        recorded=b"\x28\xb5\x2f\xfd",
    )
    base.update(fields)
    return Job(**base)


def test_job_to_dict_has_every_field_with_times_as_iso_strings_and_no_recorded_bytes():
    out = _job().to_dict()

    assert "recorded" not in out
    assert set(out) >= {
        "id",
        "state",
        "queue",
        "worker",
        "args",
        "meta",
        "tags",
        "errors",
        "attempt",
        "max_attempts",
        "priority",
        "attempted_by",
        "inserted_at",
        "scheduled_at",
        "attempted_at",
        "completed_at",
        "cancelled_at",
        "discarded_at",
    }
    assert out["state"] == "completed" and type(out["state"]) is str
    assert out["completed_at"] == "2024-05-01T12:00:02+00:00"
    assert out["cancelled_at"] is None
    assert datetime.fromisoformat(out["inserted_at"]) == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert json.loads(json.dumps(out)) == out


def test_job_to_dict_dumps_structured_args_models_as_json():
    class Args(BaseModel):
        url: str
        when: datetime

    args = Args(url="https://x", when=datetime(2024, 1, 1, tzinfo=UTC))

    out = _job(args=args).to_dict()

    assert out["args"] == {"url": "https://x", "when": "2024-01-01T00:00:00Z"}


def test_jobs_are_immutable_values():
    job = _job()

    with pytest.raises(AttributeError):
        job.state = JobState.AVAILABLE  # type: ignore[misc]
    assert job == _job()


def _new(**fields) -> NewJob:
    base = dict(
        worker="w",
        queue="q",
        args={},
        args_json="{}",
        meta={},
        meta_json="{}",
        tags=[],
        priority=0,
        max_attempts=1,
    )
    base.update(fields)
    return NewJob(**base)


def test_an_unsaved_job_runs_at_insert_time_unless_scheduled():
    now = datetime(2024, 1, 1, tzinfo=UTC)
    at = datetime(2030, 1, 1, tzinfo=UTC)

    assert _new().resolve_scheduled_at(now) == now
    assert _new(schedule_in=0).resolve_scheduled_at(now) == now
    assert _new(schedule_in=90).resolve_scheduled_at(now) == now + timedelta(seconds=90)
    assert _new(scheduled_at=at).resolve_scheduled_at(now) == at


def test_outcomes_are_small_values_with_defaults():
    assert flowpro.Snooze(30).seconds == 30
    assert flowpro.Cancel().reason == "cancelled"
    assert flowpro.Discard("bad input").reason == "bad input"
