"""Encryption: envelopes, key sources and rotation, and 100 % rejection of tampering."""

from __future__ import annotations

import base64
import os
import random
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

from flowpro.codecs import encrypted
from flowpro.errors import ConfigError, DecryptError
from tests.conftest import run_in_threads

CANARY = b"CANARY-4f1d-secret-ssn-078-05-1120"
OLD, NEW, OTHER = (encrypted.generate_key() for _ in range(3))
AAD = encrypted.job_aad("app.Send", "args", "nonce-1")

# Read by the "module:function" source below; tests change it to rotate keys.
CURRENT: list[str] = [OLD]


def current_keys() -> list[str]:
    return list(CURRENT)


SOURCE = f"{__name__}:current_keys"


@pytest.fixture(autouse=True)
def _reset_current_keys():
    CURRENT[:] = [OLD]


def sealed(plaintext: bytes = CANARY * 3) -> bytes:
    return encrypted.seal(plaintext, lambda: OLD, aad=AAD)


def assert_rejected(envelope: bytes, keys: Any = lambda: OLD, aad: bytes = AAD) -> DecryptError:
    with pytest.raises(DecryptError) as info:
        encrypted.open_(envelope, keys, aad=aad)
    assert CANARY.decode() not in str(info.value)
    assert OLD not in str(info.value)
    return info.value


def test_a_sealed_value_opens_with_the_same_key_and_aad():
    envelope = sealed(CANARY)

    assert encrypted.open_(envelope, lambda: OLD, aad=AAD) == CANARY


def test_the_envelope_has_a_versioned_header_key_id_nonce_and_tag():
    envelope = sealed(b"x" * 10)

    assert envelope[:3] == b"FP\x01"
    assert envelope[3:11].hex() == encrypted.key_id(OLD)
    assert len(envelope) == 10 + encrypted.OVERHEAD == 10 + 3 + 8 + 12 + 16
    assert CANARY not in sealed(CANARY)


def test_every_seal_uses_a_fresh_nonce():
    first, second = sealed(CANARY), sealed(CANARY)

    assert first != second
    assert first[11:23] != second[11:23]


def test_nonces_never_repeat_across_threads_and_blocks():
    seen: list[bytes] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [encrypted._nonce() for _ in range(3 * encrypted._NONCES_PER_BLOCK)]
        with lock:
            seen.extend(mine)

    run_in_threads(draw, 4)
    assert len(seen) == 12 * encrypted._NONCES_PER_BLOCK
    assert len(set(seen)) == len(seen)
    assert {len(nonce) for nonce in seen} == {12}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_reuse_the_parents_buffered_nonces():
    encrypted._nonce()  # the parent now holds a block with unused nonces
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, b"".join(encrypted._nonce() for _ in range(8)))
        os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 4096):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = b"".join(encrypted._nonce() for _ in range(8))
    assert len(child) == len(parent) == 96
    child_nonces = {child[i : i + 12] for i in range(0, 96, 12)}
    parent_nonces = {parent[i : i + 12] for i in range(0, 96, 12)}
    assert not child_nonces & parent_nonces


def test_a_module_function_string_is_resolved_on_every_call():
    envelope = encrypted.seal(CANARY, SOURCE, aad=AAD)
    CURRENT[:] = [NEW, OLD]

    rotated = encrypted.seal(CANARY, SOURCE, aad=AAD)

    assert rotated[3:11].hex() == encrypted.key_id(NEW)
    assert encrypted.open_(envelope, SOURCE, aad=AAD) == CANARY
    assert encrypted.open_(rotated, SOURCE, aad=AAD) == CANARY


def test_data_sealed_with_an_old_key_opens_after_rotation():
    envelope = sealed(CANARY)

    assert encrypted.open_(envelope, lambda: (NEW, OLD), aad=AAD) == CANARY


def test_data_sealed_with_a_key_that_was_dropped_is_rejected_naming_its_id():
    error = assert_rejected(sealed(), keys=lambda: [NEW])

    assert encrypted.key_id(OLD) in str(error)
    assert "not configured" in str(error)


def test_every_bit_flip_in_the_first_64_bytes_is_rejected():
    envelope = sealed()
    assert len(envelope) > 64

    for bit in range(64 * 8):
        tampered = bytearray(envelope)
        tampered[bit // 8] ^= 1 << (bit % 8)
        assert_rejected(bytes(tampered))


def test_1000_random_bit_flips_are_rejected():
    envelope = sealed(CANARY * 20)
    rng = random.Random(1234)

    for _ in range(1000):
        tampered = bytearray(envelope)
        for _ in range(rng.randint(1, 3)):
            bit = rng.randrange(len(envelope) * 8)
            tampered[bit // 8] ^= 1 << (bit % 8)
        if bytes(tampered) == envelope:  # an even number of flips on one bit
            continue
        assert_rejected(bytes(tampered))


def test_every_truncation_is_rejected():
    envelope = sealed()

    for size in range(len(envelope)):
        assert_rejected(envelope[:size])


@pytest.mark.parametrize("extra", [b"\x00", b"A" * 16, os.urandom(100)])
def test_appended_bytes_are_rejected(extra):
    assert_rejected(sealed() + extra)


def test_a_key_id_rewritten_to_another_configured_key_is_rejected():
    envelope = bytearray(sealed())
    envelope[3:11] = bytes.fromhex(encrypted.key_id(NEW))

    error = assert_rejected(bytes(envelope), keys=lambda: [NEW, OLD])

    assert "failed authentication" in str(error)


def test_a_ciphertext_re_encrypted_under_another_key_id_header_is_rejected():
    body = sealed()[11:]
    forged = b"FP\x01" + bytes.fromhex(encrypted.key_id(OTHER)) + body

    assert_rejected(forged, keys=lambda: [OTHER, OLD])


@pytest.mark.parametrize(
    "aad",
    [
        encrypted.job_aad("app.Send", "args", "nonce-2"),
        encrypted.job_aad("app.Other", "args", "nonce-1"),
        encrypted.job_aad("app.Send", "recorded", "nonce-1"),
        b"",
    ],
    ids=["another-job", "another-worker", "another-purpose", "no-aad"],
)
def test_a_ciphertext_moved_to_another_job_is_rejected(aad):
    assert_rejected(sealed(), aad=aad)


def test_a_wrong_key_is_rejected():
    assert_rejected(sealed(), keys=lambda: OTHER)


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        (b"", "truncated"),
        (b"XX\x01" + bytes(60), "not a flowpro sealed envelope"),
        (b"FP\x02" + bytes(60), "unsupported envelope version 2"),
        ("FP\x01", "must be bytes"),
    ],
)
def test_malformed_envelopes_are_rejected_with_a_clear_message(envelope, message):
    with pytest.raises(DecryptError, match=message):
        encrypted.open_(envelope, lambda: OLD, aad=AAD)


def test_seal_refuses_plaintext_that_is_not_bytes():
    with pytest.raises(TypeError, match="plaintext must be bytes, got str"):
        encrypted.seal("text", lambda: OLD, aad=AAD)  # type: ignore[arg-type]


def test_job_aad_separates_fields_unambiguously():
    assert encrypted.job_aad("a", "args", "b:c") != encrypted.job_aad("a:b", "args", "c")
    assert encrypted.job_aad("w", "args", "1") == encrypted.job_aad("w", "args", "1")


def test_job_aad_refuses_an_unknown_purpose():
    with pytest.raises(ValueError, match="purpose must be one of"):
        encrypted.job_aad("w", "meta", "1")


def test_the_json_form_round_trips_and_is_ascii():
    envelope = sealed()

    stored = encrypted.to_json(envelope)

    assert list(stored) == ["__flowpro_sealed__"] and stored["__flowpro_sealed__"].isascii()
    assert encrypted.is_sealed(stored) and not encrypted.is_sealed({"a": 1})
    assert encrypted.from_json(stored) == envelope


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"account_id": 7}, "found plain data"),
        ({"__flowpro_sealed__": 7}, "found plain data"),
        ({"__flowpro_sealed__": "not base64!"}, "not valid Base64"),
        ({"__flowpro_sealed__": "é"}, "not valid Base64"),
        ([1], "found plain data"),
    ],
)
def test_a_malformed_json_form_is_a_decrypt_error(value, message):
    with pytest.raises(DecryptError, match=message):
        encrypted.from_json(value)


def test_generated_keys_are_distinct_base64_32_byte_keys():
    keys = {encrypted.generate_key() for _ in range(100)}

    assert len(keys) == 100
    assert all(len(base64.b64decode(key, validate=True)) == 32 for key in keys)


SHORT = base64.b64encode(b"k" * 16).decode()


def _raises_with_secret() -> str:
    raise KeyError(f"FLOWPRO_KEY {OLD}")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (lambda: None, "returned a NoneType"),
        (lambda: "", "key #1 is empty"),
        (lambda: "   ", "key #1 is empty"),
        (list, "returned no keys"),
        (lambda: SHORT, "key #1 decodes to 16 bytes; AES-256 needs 32"),
        (lambda: [OLD, SHORT], "key #2 decodes to 16 bytes"),
        (lambda: "not-base64-but-long-enough-to-be-a-key-really!", "not valid standard Base64"),
        (lambda: OLD[:-2], "not valid standard Base64"),
        (lambda: base64.b64decode(OLD), "returned a bytes; expected a Base64 str"),
        (lambda: [base64.b64decode(OLD)], "key #1 is a bytes"),
        (_raises_with_secret, "raised KeyError"),
        (OLD, "a str key source must be 'module:function'"),
        ("no_such_module_xyz:key", "cannot import 'no_such_module_xyz' (ModuleNotFoundError)"),
        (f"{__name__}:no_such_function", "has no attribute 'no_such_function'"),
        (f"{__name__}:CANARY", "is not callable"),
        (42, "got int"),
    ],
    ids=lambda value: value if isinstance(value, str) and " " in value else "",
)
def test_bad_keys_fail_closed_with_a_message_that_never_contains_the_key(source, message):
    calls: list[Callable[[], bytes]] = [
        lambda: encrypted.seal(CANARY, source, aad=AAD),
        lambda: encrypted.open_(sealed(), source, aad=AAD),
    ]
    for call in calls:
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            call()

        text = str(info.value)
        assert OLD not in text and OLD[:-2] not in text and SHORT not in text
        assert CANARY.decode() not in text
        # Tracebacks must not show a chained exception that might quote the key.
        assert info.value.__cause__ is None
        assert info.value.__context__ is None or info.value.__suppress_context__


def test_resolved_keys_have_a_repr_without_key_material():
    keyring = encrypted.resolve_keys(lambda: [NEW, OLD])

    assert repr(keyring) == f"Keyring(ids={[encrypted.key_id(NEW), encrypted.key_id(OLD)]})"
    assert encrypted.open_(sealed(CANARY), keyring, aad=AAD) == CANARY


def test_the_encrypted_option_is_parsed_without_fetching_the_key():
    def never_called() -> str:
        raise AssertionError("the key is fetched on use, not at definition")

    spec = encrypted.spec_from_option(dict(key=never_called), "app.W")

    assert spec is not None and spec.key is never_called
    assert encrypted.spec_from_option(None, "app.W") is None
    assert encrypted.spec_from_option(dict(key=SOURCE), "app.W") == encrypted.EncryptedSpec(SOURCE)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (dict(), "needs 'key'"),
        (dict(key=SOURCE, keys=[]), "unknown key 'keys'"),
        (dict(key=OLD), "a str key source must be 'module:function'"),
        (dict(key=3), "got int"),
        (True, "must be dict"),
    ],
)
def test_a_malformed_encrypted_option_is_refused_without_echoing_a_key(option, message):
    with pytest.raises(ConfigError, match=message) as info:
        encrypted.spec_from_option(option, "app.W")

    assert OLD not in str(info.value)
