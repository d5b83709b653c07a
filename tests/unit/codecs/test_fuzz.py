"""Property-based tests: the decoding path only ever raises flowpro's own errors."""

from __future__ import annotations

import contextlib
import zlib
from typing import Any

import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowpro.codecs import encrypted, recorded, structured
from flowpro.errors import ArgsError, DecryptError, FlowproError

KEY = encrypted.generate_key()
KEYS = encrypted.resolve_keys(lambda: KEY)
AAD = encrypted.job_aad("app.Report", "recorded", "nonce-7")

fuzz = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=30,
)


def decode(blob: bytes) -> Any:
    """The full read path of an encrypted recorded output: envelope, decrypt, zstd, JSON."""
    return recorded.unpack(blob, unseal=lambda data: encrypted.open_(data, KEYS, aad=AAD))


def decodes_or_raises_flowpro_error(blob: bytes) -> None:
    with contextlib.suppress(FlowproError):
        decode(blob)


@fuzz
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_flowpro_errors(blob):
    decodes_or_raises_flowpro_error(blob)


@fuzz
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_flowpro_errors_without_encryption(blob):
    with contextlib.suppress(FlowproError):
        recorded.unpack(blob)


@fuzz
@given(st.binary(max_size=512))
def test_authentic_envelopes_of_arbitrary_bytes_raise_only_flowpro_errors(payload):
    decodes_or_raises_flowpro_error(encrypted.seal(payload, KEYS, aad=AAD))
    decodes_or_raises_flowpro_error(encrypted.seal(b"\x01" + payload, KEYS, aad=AAD))


@fuzz
@given(st.binary(max_size=512), st.booleans())
def test_authentic_zstd_frames_of_arbitrary_bytes_raise_only_flowpro_errors(payload, checksum):
    frame = zstandard.ZstdCompressor(write_checksum=checksum).compress(payload)

    decodes_or_raises_flowpro_error(encrypted.seal(b"\x01" + frame, KEYS, aad=AAD))


@fuzz
@given(st.binary(max_size=512))
def test_short_records_with_a_right_checksum_over_arbitrary_bytes_raise_only_flowpro_errors(
    payload,
):
    stored = b"\x02" + zlib.crc32(payload).to_bytes(4, "big") + payload

    decodes_or_raises_flowpro_error(encrypted.seal(stored, KEYS, aad=AAD))
    with contextlib.suppress(FlowproError):
        recorded.unpack(stored)


@fuzz
@given(json_values, st.data())
def test_any_change_to_a_sealed_record_is_rejected(value, data):
    envelope = recorded.pack([value], seal=lambda raw: encrypted.seal(raw, KEYS, aad=AAD))
    assert envelope is not None
    start = data.draw(st.integers(0, len(envelope)))
    end = data.draw(st.integers(start, len(envelope)))
    insert = data.draw(st.binary(max_size=8))
    tampered = envelope[:start] + insert + envelope[end:]

    if tampered != envelope:
        try:
            decode(tampered)
        except DecryptError:
            pass
        else:
            raise AssertionError("a tampered envelope was accepted")


@fuzz
@given(json_values)
def test_json_values_round_trip_through_pack_seal_open_unpack(value):
    stored = recorded.pack(value, seal=lambda raw: encrypted.seal(raw, KEYS, aad=AAD))

    if value is None:
        assert stored is None
    else:
        assert stored is not None and decode(stored) == value


@fuzz
@given(st.binary(max_size=2048), st.binary(max_size=64))
def test_seal_and_open_round_trip_any_bytes_and_aad(plaintext, aad):
    assert encrypted.open_(encrypted.seal(plaintext, KEYS, aad=aad), KEYS, aad=aad) == plaintext


@fuzz
@given(st.binary(max_size=256))
def test_the_json_form_round_trips_any_envelope(envelope):
    assert encrypted.from_json(encrypted.to_json(envelope)) == envelope


sealed_texts = st.binary(max_size=128).map(lambda raw: encrypted.to_json(raw)[encrypted.SEALED_KEY])


@fuzz
@given(json_values | st.fixed_dictionaries({encrypted.SEALED_KEY: st.text() | sealed_texts}))
def test_arbitrary_json_column_values_raise_only_flowpro_errors(value):
    with contextlib.suppress(FlowproError):
        decode(encrypted.from_json(value))


ARGS = structured.spec_from_option(dict(keys=["a", "b"], required=["a"]), "app.W")


@fuzz
@given(st.dictionaries(st.text(max_size=3), json_values, max_size=4) | json_values)
def test_structured_validation_returns_json_or_raises_args_error(args):
    try:
        dumped = structured.validate(ARGS, args)
    except ArgsError:
        return

    assert set(dumped) == {"a", "b"}
    assert structured.validate(ARGS, dumped) == dumped
