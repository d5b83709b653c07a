"""Recorded output: strict JSON, zstd, the stored-size limit and bounded decompression."""

from __future__ import annotations

import base64
import json
import os
import time
import tracemalloc
import zlib

import pytest
import zstandard

from flowpro.codecs import recorded
from flowpro.errors import CodecError, ConfigError, RecordTooLarge
from tests.unit.codecs.zstd_frames import rle_bomb

GIB = 1 << 30


def compressible(size: int) -> list[dict[str, object]]:
    count = size // len(json.dumps({"id": 0, "status": "ok", "note": "all rows processed"}))
    return [{"id": i, "status": "ok", "note": "all rows processed"} for i in range(count + 1)]


def random_text(size: int) -> str:
    return base64.b64encode(os.urandom(size * 3 // 4)).decode()


@pytest.mark.parametrize(
    "value",
    [
        {"rows": 3, "names": ["a", "é", "😀"], "ok": True, "none": None, "f": 1.5},
        [1, -2, 3.25, "x\u0000y"],
        "just a string",
        0,
        False,
        10**40,
    ],
)
def test_a_json_value_round_trips(value):
    stored = recorded.pack(value)

    assert stored is not None and recorded.unpack(stored) == value


def test_tuples_are_recorded_as_lists():
    stored = recorded.pack({"pair": (1, 2)})

    assert stored is not None and recorded.unpack(stored) == {"pair": [1, 2]}


def test_none_records_nothing():
    assert recorded.pack(None) is None


def test_the_stored_form_is_a_version_byte_and_one_zstd_frame_with_size_and_checksum():
    value = {"rows": ["x" * 10] * 20}
    text = json.dumps(value, separators=(",", ":")).encode()
    assert len(text) >= recorded.STORE_BELOW

    stored = recorded.pack(value)

    assert stored is not None and stored[:1] == b"\x01"
    params = zstandard.get_frame_parameters(stored[1:])
    assert params.content_size == len(text) and params.has_checksum
    assert len(stored) < len(text)


def test_a_short_record_is_stored_as_is_after_a_version_byte_and_its_crc32():
    stored = recorded.pack({"a": 1})

    assert stored == b"\x02" + zlib.crc32(b'{"a":1}').to_bytes(4, "big") + b'{"a":1}'
    assert recorded.unpack(stored) == {"a": 1}


@pytest.mark.parametrize("size", [recorded.STORE_BELOW - 1, recorded.STORE_BELOW])
def test_records_either_side_of_the_threshold_round_trip(size):
    value = "y" * (size - 2)  # a JSON string: two quotes around it

    stored = recorded.pack(value)

    assert stored is not None
    assert stored[:1] == (b"\x02" if size < recorded.STORE_BELOW else b"\x01")
    assert recorded.unpack(stored) == value


def test_a_short_record_with_a_flipped_bit_is_refused():
    stored = bytearray(recorded.pack({"amount": 10}) or b"")
    stored[-3] ^= 0x01  # '{"amount":10}' becomes '{"amount":00}': still JSON, wrong value

    with pytest.raises(CodecError, match="checksum does not match"):
        recorded.unpack(bytes(stored))


def test_a_short_record_longer_than_the_bound_is_refused_before_parsing():
    raw = b"[" + b"1," * 50 + b"1]"
    blob = b"\x02" + zlib.crc32(raw).to_bytes(4, "big") + raw

    with pytest.raises(CodecError, match="at most 10 are allowed"):
        recorded.unpack(blob, max_output_size=10)


def test_100_kb_of_compressible_output_passes_the_default_limit():
    value = compressible(100_000)

    stored = recorded.pack(value)

    assert len(json.dumps(value)) >= 100_000
    assert stored is not None and len(stored) <= 32_000
    assert recorded.unpack(stored) == value


def test_80_kb_of_random_output_is_over_the_default_limit():
    with pytest.raises(RecordTooLarge) as info:
        recorded.pack(random_text(80_000))

    message = str(info.value)
    assert "after compression and encoding" in message
    assert "the limit is 32000 bytes" in message
    assert "80002 bytes of JSON" in message


def test_a_64000_limit_accepts_output_the_default_limit_refuses():
    value = random_text(50_000)

    with pytest.raises(RecordTooLarge):
        recorded.pack(value)
    stored = recorded.pack(value, limit=64_000)

    assert stored is not None and 32_000 < len(stored) <= 64_000
    assert recorded.unpack(stored, limit=64_000) == value


def test_the_limit_applies_after_sealing():
    value = "x" * 10
    size = len(recorded.pack(value) or b"")

    with pytest.raises(RecordTooLarge, match=f"is {size + 1} bytes"):
        recorded.pack(value, limit=size, seal=lambda data: data + b"!")


def test_json_too_large_to_be_read_back_is_refused_before_compressing():
    with pytest.raises(RecordTooLarge, match="at most 16777216 bytes can be recorded"):
        recorded.pack("a" * (16 * 1024 * 1024))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), r"non-finite number \(nan\) at \$"),
        ({"a": [1, float("inf")]}, r"non-finite number \(inf\) at \$.a\[1\]"),
        ({"s": {1, 2}}, r"a value of type set at \$.s"),
        ([b"raw"], r"a value of type bytes at \$\[0\]"),
        ({1: "a"}, "non-str dict key of type int"),
        ({"o": object()}, "a value of type object"),
        ("\ud800", "lone surrogate"),
        (10**5000, "not JSON-serialisable"),
    ],
    ids=["nan", "inf", "set", "bytes", "int-key", "object", "surrogate", "huge-int"],
)
def test_values_that_are_not_strict_json_are_refused(value, message):
    with pytest.raises(CodecError, match=message) as info:
        recorded.pack(value)

    assert not isinstance(info.value, RecordTooLarge)


def test_redacted_errors_hide_dict_keys_which_may_be_data():
    with pytest.raises(CodecError, match=r"at \$\.\*\[0\]") as info:
        recorded.pack({"CANARY-ssn": [{1}]}, redact=True)

    assert "CANARY" not in str(info.value)


def test_very_deep_nesting_is_refused():
    value: list[object] = []
    for _ in range(recorded.MAX_DEPTH + 5):
        value = [value]

    with pytest.raises(CodecError, match="nested more than 200 levels"):
        recorded.pack(value)


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "32000"])
def test_a_limit_that_is_not_a_positive_int_is_a_config_error(limit):
    with pytest.raises(ConfigError, match="'limit' must be a positive int"):
        recorded.pack({"a": 1}, limit=limit)


def frame(raw: bytes, **options: object) -> bytes:
    return zstandard.ZstdCompressor(**options).compress(raw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "empty"),
        (b"\x03" + frame(b"1", write_checksum=True), "unknown format version 0x03"),
        (b"\x02\x00\x00", "truncated before its checksum"),
        (b"\x02" + zlib.crc32(b"[1]").to_bytes(4, "big") + b"[2]", "checksum does not match"),
        (b"\x02" + zlib.crc32(b"[NaN]").to_bytes(4, "big") + b"[NaN]", "not UTF-8 JSON"),
        (b"\x02" + zlib.crc32(b"\xff").to_bytes(4, "big") + b"\xff", "not UTF-8 JSON"),
        (b"\x01", "not a zstd frame"),
        (b"\x01garbage-garbage", "not a zstd frame"),
        (b"\x01" + frame(b"[1]", write_checksum=True)[:-2], "decompression failed"),
        (b"\x01" + frame(b"[1]", write_checksum=True) + b"\x00", "decompression failed"),
        (b"\x01" + frame(b"[1]", write_checksum=False), "no checksum"),
        (b"\x01" + frame(b"[1]", write_content_size=False), "no content size"),
        (b"\x01" + frame(b"not json", write_checksum=True), "not UTF-8 JSON"),
        (b"\x01" + frame(b"\xff\xfe", write_checksum=True), "not UTF-8 JSON"),
        (b"\x01" + frame(b"[NaN]", write_checksum=True), "not UTF-8 JSON"),
        (b"\x01" + frame(b"[Infinity]", write_checksum=True), "not UTF-8 JSON"),
        (b"\x01" + frame(b"[" * 100_000, write_checksum=True), "not UTF-8 JSON"),
    ],
)
def test_corrupt_records_raise_codec_error(blob, message):
    with pytest.raises(CodecError, match=message):
        recorded.unpack(blob)


def test_a_flipped_bit_in_the_compressed_payload_is_caught_by_the_checksum():
    stored = bytearray(recorded.pack(compressible(2_000)) or b"")
    stored[-8] ^= 0x01

    with pytest.raises(CodecError):
        recorded.unpack(bytes(stored))


def test_unpack_refuses_values_that_are_not_bytes():
    with pytest.raises(CodecError, match="must be bytes, got str"):
        recorded.unpack("\x01abc")  # type: ignore[arg-type]


def test_the_rle_bomb_used_below_really_expands_to_a_gibibyte():
    reader = zstandard.ZstdDecompressor().stream_reader(
        rle_bomb(GIB, declared=None, checksum=False)
    )

    total = 0
    while chunk := reader.read(1 << 20):
        total += len(chunk)

    assert total == GIB


@pytest.mark.parametrize(
    ("bomb", "message"),
    [
        (rle_bomb(GIB, declared=GIB), "claims 1073741824 bytes when decompressed"),
        (rle_bomb(GIB, declared=100), "decompression failed"),
        (rle_bomb(GIB, declared=None), "no content size"),
    ],
    ids=["header-claims-1GiB", "header-lies-small", "no-content-size"],
)
def test_a_zstd_bomb_is_rejected_fast_without_the_memory(bomb, message):
    assert len(bomb) < 40_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(CodecError, match=message):
            recorded.unpack(b"\x01" + bomb)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert elapsed < 0.5
    assert peak < 4 * 1024 * 1024


def test_the_bound_is_configurable():
    stored = recorded.pack("a" * 2_000_000, limit=1_000_000)
    assert stored is not None

    with pytest.raises(CodecError, match="at most 1000000 are allowed"):
        recorded.unpack(stored, max_output_size=1_000_000)
    assert recorded.unpack(stored) == "a" * 2_000_000


def test_unseal_runs_before_decoding():
    stored = recorded.pack([1, 2]) or b""

    value = recorded.unpack(stored[::-1], unseal=lambda data: data[::-1])

    assert value == [1, 2]


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (None, None),
        (False, None),
        (True, recorded.RecordedSpec(limit=32_000, to=None)),
        (dict(limit=64_000), recorded.RecordedSpec(limit=64_000, to=None)),
        (dict(to="result"), recorded.RecordedSpec(limit=32_000, to="result")),
    ],
)
def test_the_recorded_option_is_parsed(option, expected):
    assert recorded.spec_from_option(option, "app.W") == expected


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (dict(limt=1), "unknown key 'limt'"),
        (dict(limit=0), "'limit' must be a positive int"),
        (dict(to=""), "'to' must be a non-empty str"),
        ("yes", "must be True or dict"),
    ],
)
def test_a_malformed_recorded_option_is_refused(option, message):
    with pytest.raises(ConfigError, match=message):
        recorded.spec_from_option(option, "app.W")
