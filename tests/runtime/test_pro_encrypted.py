"""Encrypted Pro workers on real databases: at rest, tampering, key rotation, key errors, and a
canary secret that must never leak into tables, logs, CLI output or reprs."""

from __future__ import annotations

import base64
import json
import logging
import random
import uuid
from datetime import datetime
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

import flowpro
from flowpro.codecs import encrypted as codec
from tests.conftest import eventually
from tests.runtime.pro_helpers import (
    count_rows,
    dump_tables,
    occurrences,
    raw_column,
    raw_columns,
    set_column,
    set_json,
)

KEY_A = codec.generate_key()
KEY_B = codec.generate_key()
KEYS: list[Any] = [KEY_A]
KEY_CALLS: list[int] = []
ran: list[Any] = []
CANARY = f"CANARY-{uuid.uuid4().hex}"


def current_keys() -> Any:
    """The key source of the workers below (named by a 'module:function' string too)."""
    KEY_CALLS.append(1)
    if KEYS and isinstance(KEYS[0], Exception):
        raise KEYS[0]
    return list(KEYS) if len(KEYS) != 1 else KEYS[0]


@pytest.fixture(autouse=True)
def _reset():
    KEYS[:] = [KEY_A]
    KEY_CALLS.clear()
    ran.clear()
    yield
    KEYS[:] = [KEY_A]
    ran.clear()


class Card(BaseModel):
    number: str
    mode: str = "echo"


class Vault(
    flowpro.Worker,
    queue="vault",
    structured=Card,
    recorded=True,
    encrypted=dict(key="tests.runtime.test_pro_encrypted:current_keys"),
    max_attempts=3,
):
    """Echoes the card number; mode "fail-once" raises it on attempt 1."""

    def backoff(self, job):
        return 0

    def process(self, job):
        ran.append(job)
        if job.args.mode == "fail-once" and job.attempt == 1:
            raise RuntimeError(f"card {job.args.number} declined")
        if job.args.mode == "discard":
            return flowpro.Discard(f"card {job.args.number} is blocked")
        if job.args.mode == "cancel":
            return flowpro.Cancel(f"card {job.args.number} was closed")
        return {"echo": job.args.number}


class Safe(flowpro.Worker, queue="safe", recorded=True, encrypted=dict(key=current_keys)):
    def process(self, job):
        ran.append(job.id)
        return {"card": job.args["card"]}


class OtherSafe(flowpro.Worker, queue="safe", recorded=True, encrypted=dict(key=current_keys)):
    def process(self, job):
        ran.append(job.id)
        return {"card": job.args["card"]}


def envelope(fp: flowpro.FlowPro, job_id: int, column: str = "args") -> bytes:
    value = raw_column(fp, job_id, column)
    return value if column == "recorded" else codec.from_json(value)


def sealed(blob: bytes) -> dict[str, str]:
    return codec.to_json(blob)


# At rest


def test_encrypted_args_are_unreadable_at_rest_while_meta_stays_plaintext(fp):
    job = fp.insert(Vault.new({"number": CANARY}, meta={"customer": "c-42"}, tags=["vip"]))

    stored = raw_column(fp, job.id, "args")
    assert list(stored) == [codec.SEALED_KEY]
    assert CANARY not in json.dumps(stored)
    box = codec.from_json(stored)
    assert box[:3] == b"FP\x01" and box[3:11].hex() == codec.key_id(KEY_A)
    assert raw_column(fp, job.id, "meta") == {"customer": "c-42"}
    assert raw_column(fp, job.id, "tags") == ["vip"]
    assert CANARY not in repr(job) and "args=<encrypted>" in repr(job)
    assert job.to_dict()["args"] == "<encrypted>"
    assert fp.get_job(job.id).args == stored  # reading a job never decrypts it


def test_process_sees_decrypted_args_and_the_recorded_output_is_encrypted_at_rest(fp):
    job = fp.insert(Vault.new({"number": CANARY}))

    assert fp.drain() == {"completed": 1}

    assert ran[0].args == Card(number=CANARY)
    assert CANARY not in repr(ran[0]) and ran[0].to_dict()["args"] == "<encrypted>"
    record = raw_column(fp, job.id, "recorded")
    assert record[:3] == b"FP\x01" and CANARY.encode() not in record
    assert Vault.fetch_recorded(fp.get_job(job.id)) == {"echo": CANARY}


def test_error_messages_of_an_encrypted_worker_are_sealed_and_readable_with_the_key(fp):
    job = fp.insert(Vault.new({"number": CANARY, "mode": "fail-once"}))

    assert fp.drain() == {"retryable": 1, "completed": 1}

    entry = fp.get_job(job.id).errors[0]
    assert entry["error"] == "RuntimeError (message encrypted)"
    assert "traceback" not in entry and CANARY not in json.dumps(entry)
    opened = Vault.read_error(fp.get_job(job.id), entry)
    assert opened["error"] == f"RuntimeError: card {CANARY} declined"
    assert "Traceback (most recent call last)" in opened["traceback"]


# Tampering


def _flip(index: int, bit: int):
    def mutate(box: bytes) -> bytes:
        flipped = bytearray(box)
        flipped[index] ^= 1 << bit
        return bytes(flipped)

    return mutate


def _mutations(size: int, rng: random.Random) -> list[tuple[str, Any]]:
    """(label, function of an envelope) for every tampering the issue lists."""
    out: list[tuple[str, Any]] = []
    for index in range(64):
        for bit in range(8):
            out.append((f"flip byte {index} bit {bit}", _flip(index, bit)))
    for n in range(1_000):
        index, bit = rng.randrange(size), rng.randrange(8)
        out.append((f"random flip {n}: byte {index} bit {bit}", _flip(index, bit)))
    for keep in (0, 2, 3, 11, 23, 38, size - 16, size - 1):
        out.append((f"truncated to {keep} bytes", lambda box, keep=keep: box[:keep]))
    for extra in (b"\x00", b"A" * 16):
        out.append((f"{len(extra)} bytes appended", lambda box, extra=extra: box + extra))
    out.append(("tag appended twice", lambda box: box + box[-16:]))
    other_id = bytes.fromhex(codec.key_id(KEY_B))
    out.append(("wrong key id", lambda box: box[:3] + other_id + box[11:]))
    out.append(("version 2", lambda box: box[:2] + b"\x02" + box[3:]))
    out.append(("not an envelope", lambda box: b"XY" + box[2:]))
    return out


def test_every_tampered_args_envelope_is_rejected_before_process_runs(fp):
    card = f"{CANARY} 4111 1111 1111 1111"  # long enough for an envelope over 64 bytes
    first = fp.insert(Safe.new({"card": card}))
    size = len(envelope(fp, first.id))
    assert size > 64
    mutations = _mutations(size, random.Random(20_240_601))
    jobs = [first, *fp.insert_all([Safe.new({"card": card}) for _ in mutations[1:]])]
    boxes = {job_id: codec.from_json(value) for job_id, value in raw_columns(fp, "args").items()}
    replaced: dict[int, Any] = {}
    for job, (label, mutate) in zip(jobs, mutations, strict=True):
        tampered = mutate(boxes[job.id])
        assert tampered != boxes[job.id], label
        replaced[job.id] = sealed(tampered)
    plain = fp.insert(Safe.new({"card": card}))
    not_b64 = fp.insert(Safe.new({"card": card}))
    replaced[plain.id] = {"card": card}  # a downgrade to plaintext args
    replaced[not_b64.id] = {codec.SEALED_KEY: "***not base64***"}
    set_json(fp, "args", replaced)

    counts = fp.drain("safe")

    assert counts == {"discarded": len(mutations) + 2}
    assert ran == []
    for job in fp.list_jobs(state="discarded", limit=10_000):
        assert [entry["kind"] for entry in job.errors] == ["DecryptError"]
        assert job.errors[0]["error"].startswith("DecryptError: ")
        assert CANARY not in json.dumps(job.errors)
    assert "found plain data" in fp.get_job(plain.id).errors[0]["error"]
    assert "not valid Base64" in fp.get_job(not_b64.id).errors[0]["error"]


def test_an_untampered_envelope_still_runs_which_keeps_the_tampering_test_honest(fp):
    job = fp.insert(Safe.new({"card": CANARY}))
    box = envelope(fp, job.id)
    set_json(fp, "args", {job.id: sealed(box)})  # rewritten byte for byte

    assert fp.drain("safe") == {"completed": 1}


def test_a_ciphertext_moved_to_another_job_worker_or_purpose_is_rejected(fp):
    donor = fp.insert(Safe.new({"card": CANARY}))
    same_worker = fp.insert(Safe.new({"card": "other"}))
    other_worker = fp.insert(OtherSafe.new({"card": "other"}))
    renamed = fp.insert(Safe.new({"card": CANARY}))
    box = envelope(fp, donor.id)
    set_json(fp, "args", {same_worker.id: sealed(box), other_worker.id: sealed(box)})
    # Same id and ciphertext, but the row now claims another worker with the same key.
    set_column(fp, renamed.id, "worker", OtherSafe.__flowpro_name__)

    assert fp.drain("safe") == {"completed": 1, "discarded": 3}

    assert ran == [donor.id]
    for job_id in (same_worker.id, other_worker.id, renamed.id):
        error = fp.get_job(job_id).errors[0]["error"]
        assert error.startswith("DecryptError: sealed data failed authentication")
    # The donor's recorded output, moved into its args: sealed for another purpose.
    fp.retry_job(donor.id)
    set_json(fp, "args", {donor.id: sealed(envelope(fp, donor.id, "recorded"))})
    assert fp.drain("safe") == {"discarded": 1}
    assert ran == [donor.id]


def test_tampered_or_moved_recorded_output_and_sealed_errors_fail_to_read(fp):
    first = fp.insert(Vault.new({"number": CANARY, "mode": "fail-once"}))
    second = fp.insert(Vault.new({"number": "other"}))
    fp.drain()
    record = envelope(fp, first.id, "recorded")
    set_column(fp, second.id, "recorded", record)  # moved to another job
    flipped = bytearray(record)
    flipped[-1] ^= 1
    set_column(fp, first.id, "recorded", bytes(flipped))
    error = fp.get_job(first.id).errors[0]
    box = bytearray(codec.from_json(error["sealed"]))
    box[20] ^= 0x80
    bad_error = {**error, "sealed": sealed(bytes(box))}

    for job_id in (first.id, second.id):
        with pytest.raises(flowpro.DecryptError) as info:
            Vault.fetch_recorded(fp.get_job(job_id))
        assert CANARY not in str(info.value)
    with pytest.raises(flowpro.DecryptError, match="failed authentication"):
        Vault.read_error(fp.get_job(first.id), bad_error)


# Keys


def test_key_rotation_keeps_jobs_sealed_under_the_old_key_running_without_a_restart(fp):
    old = fp.insert(Safe.new({"card": "old"}))
    KEYS[:] = [KEY_B, KEY_A]  # rotate: the new key first, the old one still listed
    new = fp.insert(Safe.new({"card": "new"}))

    assert fp.drain("safe") == {"completed": 2}

    assert envelope(fp, old.id)[3:11].hex() == codec.key_id(KEY_A)
    assert envelope(fp, new.id)[3:11].hex() == codec.key_id(KEY_B)
    for job in (old, new):  # outputs are sealed with the current (new) key
        assert envelope(fp, job.id, "recorded")[3:11].hex() == codec.key_id(KEY_B)
    KEYS[:] = [KEY_B]  # the old key retired
    assert Safe.fetch_recorded(fp.get_job(old.id)) == {"card": "old"}
    assert Safe.fetch_recorded(fp.get_job(new.id)) == {"card": "new"}


def test_a_job_sealed_with_a_retired_key_is_discarded_and_runs_once_the_key_is_back(fp):
    job = fp.insert(Safe.new({"card": CANARY}))
    KEYS[:] = [KEY_B]

    assert fp.drain("safe") == {"discarded": 1}
    error = fp.get_job(job.id).errors[0]["error"]
    assert error.startswith("DecryptError: sealed with a key that is not configured")
    assert codec.key_id(KEY_A) in error and KEY_A not in error and KEY_B not in error

    KEYS[:] = [KEY_B, KEY_A]
    fp.retry_job(job.id)
    assert fp.drain("safe") == {"completed": 1}


def test_the_key_source_is_asked_again_for_every_job_so_rotation_needs_no_restart(fp):
    first = fp.insert(Safe.new({"card": "1"}))
    calls = len(KEY_CALLS)
    KEYS[:] = [KEY_B, KEY_A]
    second = fp.insert(Safe.new({"card": "2"}))

    assert len(KEY_CALLS) > calls
    assert envelope(fp, first.id)[3:11].hex() == codec.key_id(KEY_A)
    assert envelope(fp, second.id)[3:11].hex() == codec.key_id(KEY_B)


SHORT = base64.b64encode(b"sixteen byte key").decode()


@pytest.mark.parametrize(
    ("keys", "message", "secret"),
    [
        ([""], "key #1 is empty", None),
        ([None], "returned a NoneType", None),
        ([[]], "returned no keys", None),
        ([SHORT], "key #1 decodes to 16 bytes; AES-256 needs 32", SHORT),
        (["p@ssw0rd-not-base64"], "key #1 is not valid standard Base64", "p@ssw0rd"),
        ([KEY_A, "short"], "key #2 is not valid standard Base64", KEY_A),
        ([KeyError("FLOWPRO_KEY=topsecret")], "raised KeyError; it must return a key", "topsecret"),
    ],
    ids=["empty", "none", "no-keys", "short", "not-base64", "bad-second", "raises"],
)
def test_a_missing_empty_or_short_key_fails_closed_at_insert_and_writes_nothing(
    fp, keys, message, secret
):
    KEYS[:] = keys

    with pytest.raises(flowpro.ConfigError, match=message) as one:
        fp.insert(Safe.new({"card": CANARY}))
    with pytest.raises(flowpro.ConfigError, match=message) as many:
        fp.insert_all([OtherSafe.new({"card": "x"}, queue="plain"), Safe.new({"card": CANARY})])

    assert count_rows(fp) == 0
    for info in (one, many):
        assert CANARY not in str(info.value)
        if secret is not None:
            assert secret not in str(info.value)


def test_a_key_source_that_cannot_be_imported_fails_at_insert_and_raw_keys_are_refused(fp):
    class Misconfigured(flowpro.Worker, encrypted=dict(key="no_such_module_xyz:key")):
        pass

    with pytest.raises(flowpro.ConfigError, match="cannot import 'no_such_module_xyz'"):
        fp.insert(Misconfigured.new({"card": CANARY}))
    assert count_rows(fp) == 0
    with pytest.raises(flowpro.ConfigError, match="raw keys do not belong in code") as info:

        class Pasted(flowpro.Worker, encrypted=dict(key=KEY_A)):
            pass

    assert KEY_A not in str(info.value)


class Patient(flowpro.Worker, queue="safe", encrypted=dict(key=current_keys)):
    def backoff(self, job):
        return 3600

    def process(self, job):
        ran.append(job.id)


def test_a_key_source_failing_at_run_time_makes_the_attempt_retryable_without_running(fp):
    job = fp.insert(Patient.new({"card": CANARY}))
    KEYS[:] = [RuntimeError("vault unreachable")]

    assert fp.drain("safe") == {"retryable": 1}

    entry = fp.get_job(job.id).errors[0]
    assert ran == []
    assert entry["error"].startswith("ConfigError: encryption key source")
    assert "raised RuntimeError" in entry["error"]
    KEYS[:] = [KEY_A]
    fp.retry_job(job.id)
    assert fp.drain("safe") == {"completed": 1}
    assert ran == [job.id]


def test_an_encrypted_job_inserted_under_an_old_name_still_decrypts_after_a_rename(fp):
    class Before(
        flowpro.Worker, queue="rename", name="vault.Old", encrypted=dict(key=current_keys)
    ):
        def process(self, job):
            ran.append(job.args["card"])

    job = fp.insert(Before.new({"card": CANARY}))

    class After(
        flowpro.Worker,
        queue="rename",
        name="vault.New",
        aliases=["vault.Old"],
        recorded=True,
        encrypted=dict(key=current_keys),
    ):
        def process(self, job):
            ran.append(job.args["card"])
            return job.args["card"]

    assert fp.drain("rename") == {"completed": 1}

    assert ran == [CANARY]
    assert After.fetch_recorded(fp.get_job(job.id)) == CANARY


# No leak


class PlainLeak(flowpro.Worker, queue="leak", max_attempts=1):
    """Not encrypted: the control that proves the searches below can find a secret."""

    def process(self, job):
        raise RuntimeError(f"card {job.args['number']} declined")


class LeakyHooks(Vault, queue="leak"):
    def after_process(self, state, job, result):
        raise RuntimeError(f"hook saw {job.args.number}")

    def on_discarded(self, job, reason):
        raise RuntimeError(f"hook saw {job.args.number} {reason}")


def test_a_canary_secret_in_encrypted_args_never_leaks_to_tables_logs_cli_or_reprs(
    fp, db_url, caplog
):
    control = f"CONTROL-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    jobs = [
        fp.insert(LeakyHooks.new({"number": CANARY, "mode": mode}))
        for mode in ("fail-once", "echo", "discard", "cancel")
    ]
    plain = fp.insert(PlainLeak.new({"number": control}))

    fp.run(queues={"leak": 2}, until_idle=True)

    states = [fp.get_job(job.id).state for job in jobs]
    assert states == ["completed", "completed", "discarded", "cancelled"]
    assert any(job.args.number == CANARY for job in ran)  # the workers did see it
    assert LeakyHooks.fetch_recorded(fp.get_job(jobs[0].id)) == {"echo": CANARY}
    labels = [fp.get_job(job.id).errors[-1]["error"] for job in (jobs[0], jobs[2], jobs[3])]
    assert labels == [
        "RuntimeError (message encrypted)",
        "Discard (message encrypted)",
        "Cancel (message encrypted)",
    ]
    discarded = fp.get_job(jobs[2].id)
    assert LeakyHooks.read_error(discarded, discarded.errors[-1])["error"] == (
        f"card {CANARY} is blocked"
    )
    dump = dump_tables(fp)
    assert occurrences(dump, CANARY) == []
    assert ("flowpro_jobs", "args") in occurrences(dump, control)  # the dump can find secrets
    assert ("flowpro_jobs", "errors") in occurrences(dump, control)
    assert "a hook of" in caplog.text  # the hooks' failures were logged ...
    assert CANARY not in caplog.text  # ... without their messages
    for job in [*jobs, *ran]:
        saved = fp.get_job(job.id)
        for text in (repr(job), repr(saved), json.dumps(saved.to_dict(), default=str)):
            assert CANARY not in text
    cli = _cli_output(db_url, [job.id for job in jobs], plain.id)
    assert control in cli
    assert CANARY not in cli


def _cli_output(url: str, ids: list[int], control_id: int) -> str:
    cli = pytest.importorskip("flowpro.cli").cli
    runner = CliRunner()
    commands = [["jobs", "list"], ["jobs", "list", "--json"]]
    for job_id in [*ids, control_id]:
        commands += [["jobs", "show", str(job_id)], ["jobs", "show", str(job_id), "--json"]]
    out = []
    for command in commands:
        result = runner.invoke(cli, [*command, "--database-url", url], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        out.append(result.output)
    return "\n".join(out)


class Expiring(flowpro.Worker, queue="expiring", encrypted=dict(key=current_keys), deadline=0.001):
    def process(self, job):
        ran.append(job.id)


def test_an_encrypted_job_past_its_deadline_is_cancelled_with_a_readable_message(fp):
    job = fp.insert(Expiring.new({"card": CANARY}))
    deadline = datetime.fromisoformat(job.meta["deadline_at"])
    eventually(lambda: flowpro.job.utcnow() > deadline, timeout=1)

    assert fp.drain("expiring") == {"cancelled": 1}

    entry = fp.get_job(job.id).errors[0]
    assert ran == []
    # flowpro's own message quotes nothing secret, so it is not sealed.
    assert entry["error"] == f"deadline {deadline.isoformat()} passed before the job could start"
    assert "sealed" not in entry


def test_an_unsaved_encrypted_job_hides_its_args_in_repr():
    new = Safe.new({"card": CANARY})

    assert CANARY not in repr(new)
    assert "args=<encrypted>" in repr(new)
    assert CANARY in repr(PlainLeak.new({"number": CANARY}))  # plain workers show their args


class LosesItsKey(flowpro.Worker, queue="safe", recorded=True, encrypted=dict(key=current_keys)):
    def backoff(self, job):
        return 3600

    def process(self, job):
        KEYS[:] = [RuntimeError("vault down")]  # the key source fails from now on
        return {"card": job.args["card"]}


def test_a_key_source_failing_after_process_fails_the_attempt_without_storing_plaintext(fp):
    job = fp.insert(LosesItsKey.new({"card": CANARY}))

    assert fp.drain("safe") == {"retryable": 1}

    saved = fp.get_job(job.id)
    assert saved.recorded is None
    assert saved.errors[0]["error"] == (
        "ConfigError (message withheld: the encryption key is unavailable)"
    )
    assert CANARY not in json.dumps(saved.errors)
