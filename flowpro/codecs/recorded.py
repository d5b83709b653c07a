"""Recorded output: a return value as strict JSON, zstd-compressed, size-limited and bounded.

Stored formats, told apart by their first byte:

- ``0x01``: one zstd frame that carries its content size and a checksum and holds the UTF-8
  JSON text. Every record of ``STORE_BELOW`` bytes of JSON or more.
- ``0x02``: the CRC-32 of the JSON text (4 bytes, big-endian), then the UTF-8 JSON text as is.
  Records shorter than ``STORE_BELOW`` bytes: zstd cannot shrink them (its frame header and
  checksum alone are 13 bytes), and a compression call releases the GIL, which in a node busy
  with short jobs costs a thread switch per record.

An encrypted worker passes ``seal``/``unseal`` (see ``flowpro.codecs.encrypted``) so the limit
applies to the bytes actually stored.
"""

from __future__ import annotations

import json
import math
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import zstandard

from flowpro._json import compact
from flowpro.errors import CodecError, ConfigError, RecordTooLarge

DEFAULT_LIMIT = 32_000
MIN_MAX_OUTPUT = 16 * 1024 * 1024
MAX_DEPTH = 200
_VERSION = b"\x01"
_STORED = b"\x02"
STORE_BELOW = 128  # bytes of JSON: shorter records are stored uncompressed (format 0x02)
_LEVEL = 3
_local = threading.local()
_CONTAINERS = (dict, list, tuple)


@dataclass(frozen=True, slots=True)
class RecordedSpec:
    """The parsed ``recorded=`` option: the size limit and an optional destination name."""

    limit: int = DEFAULT_LIMIT
    to: str | None = None


def spec_from_option(option: Any, label: str) -> RecordedSpec | None:
    """Return the recorded spec of a ``recorded=`` worker option (None: not recorded).

    Args:
        option: ``None``/``False``, ``True``, or ``dict(to=..., limit=...)`` (both optional).
        label: the worker name, used in error messages.

    Raises:
        ConfigError: the option is malformed; the message names the offending key.

    Example:
        >>> spec_from_option(dict(limit=64_000), "app.Send")
        RecordedSpec(limit=64000, to=None)
    """
    prefix = f"recorded option of worker {label!r}"
    if option is None or option is False:
        return None
    if option is True:
        return RecordedSpec()
    if not isinstance(option, Mapping):
        raise ConfigError(f"{prefix} must be True or dict(to=..., limit=...), got {option!r}")
    for name in option:
        if name not in ("to", "limit"):
            raise ConfigError(f"{prefix} has unknown key {name!r}; expected 'to' and 'limit'")
    limit = check_limit(option.get("limit", DEFAULT_LIMIT), prefix)
    to = option.get("to")
    if to is not None and (not isinstance(to, str) or not to):
        raise ConfigError(f"{prefix}: 'to' must be a non-empty str, got {to!r}")
    return RecordedSpec(limit=limit, to=to)


def check_limit(limit: Any, what: str = "recorded limit") -> int:
    """Return ``limit`` if it is a positive int, else raise ConfigError."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigError(f"{what}: 'limit' must be a positive int (bytes), got {limit!r}")
    return limit


def max_output(limit: int) -> int:
    """Return the largest JSON text (bytes) a record with this stored ``limit`` may expand to."""
    return max(limit * 64, MIN_MAX_OUTPUT)


def pack(
    value: Any,
    *,
    limit: int = DEFAULT_LIMIT,
    seal: Callable[[bytes], bytes] | None = None,
    redact: bool = False,
) -> bytes | None:
    """Return the stored form of a return value, or None for ``None`` (nothing recorded).

    Args:
        value: str, int, finite float, bool, None, list/tuple, or dict with str keys, nested at
            most ``MAX_DEPTH`` deep. Tuples come back as lists.
        limit: the largest stored size in bytes, after compression and encoding (and sealing).
        seal: applied to the compressed bytes before the size check (encrypted workers).
        redact: show dict keys as ``*`` in error paths (encrypted workers: keys may be data).

    Returns:
        The bytes to store, or None.

    Raises:
        CodecError: the value is not strict JSON (NaN, sets, bytes, non-str keys, too deep).
        RecordTooLarge: the stored form is over ``limit`` (sizes and limit in the message).

    Example:
        >>> unpack(pack({"rows": 3}))
        {'rows': 3}
    """
    if value is None:
        return None
    if type(limit) is not int or limit <= 0:
        check_limit(limit)
    try:
        text = compact(value, ascii_only=False)
        _check_shape(value)
    except (TypeError, ValueError, RecursionError, CodecError) as exc:
        # Walk the value only now, to name the first place that is not strict JSON.
        _check(value, "$", 0, redact)
        raise CodecError(f"recorded output is not JSON-serialisable: {exc}") from None
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise CodecError("recorded output contains a lone surrogate in a string") from None
    bound = max_output(limit)
    if len(raw) > bound:
        raise RecordTooLarge(
            f"recorded output is {len(raw)} bytes of JSON; at most {bound} bytes can be "
            f"recorded with a limit of {limit} bytes; return less"
        )
    if len(raw) < STORE_BELOW:
        stored = _STORED + zlib.crc32(raw).to_bytes(4, "big") + raw
    else:
        stored = _VERSION + _compressor().compress(raw)
    if seal is not None:
        stored = seal(stored)
    if len(stored) > limit:
        raise RecordTooLarge(
            f"recorded output is {len(stored)} bytes after compression and encoding "
            f"({len(raw)} bytes of JSON); the limit is {limit} bytes; return less, "
            "or raise the worker's recorded limit"
        )
    return stored


def unpack(
    blob: bytes,
    *,
    limit: int = DEFAULT_LIMIT,
    max_output_size: int | None = None,
    unseal: Callable[[bytes], bytes] | None = None,
) -> Any:
    """Return the value stored by ``pack``.

    Decompression is bounded: a frame that claims (in its header) or expands to more than
    ``max_output_size`` bytes (default ``max_output(limit)``) is refused without allocating it.

    Args:
        blob: the stored bytes.
        limit: the worker's recorded limit, which sets the default bound.
        max_output_size: the largest JSON text accepted, in bytes.
        unseal: applied first (encrypted workers); it raises ``DecryptError`` on tampering.

    Raises:
        CodecError: the blob is corrupt, of an unknown version, too large, or not JSON.

    Example:
        >>> unpack(b"junk")
        Traceback (most recent call last):
        ...
        flowpro.errors.CodecError: recorded output has unknown format version 0x6a
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CodecError(f"recorded output must be bytes, got {type(blob).__name__}")
    bound = max_output(check_limit(limit)) if max_output_size is None else max_output_size
    data = bytes(unseal(bytes(blob)) if unseal is not None else blob)
    if not data:
        raise CodecError("recorded output is empty")
    version = data[:1]
    if version == _VERSION:
        raw = _decompress(data[1:], bound)
    elif version == _STORED:
        raw = _stored(data, bound)
    else:
        raise CodecError(f"recorded output has unknown format version 0x{data[0]:02x}")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CodecError("recorded output is corrupt: not UTF-8 JSON") from None


# Helpers


def _compressor() -> zstandard.ZstdCompressor:
    # Compressor contexts are not thread-safe; keep one per thread.
    cctx: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = zstandard.ZstdCompressor(level=_LEVEL, write_checksum=True, write_content_size=True)
        _local.cctx = cctx
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = zstandard.ZstdDecompressor()
        _local.dctx = dctx
    return dctx


def _decompress(frame: bytes, bound: int) -> bytes:
    try:
        params = zstandard.get_frame_parameters(frame)
    except (zstandard.ZstdError, ValueError, TypeError):
        raise CodecError("recorded output is corrupt: not a zstd frame") from None
    size = params.content_size
    if size == zstandard.CONTENTSIZE_UNKNOWN:
        raise CodecError("recorded output is corrupt: the zstd frame has no content size")
    if size > bound:
        raise CodecError(
            f"recorded output claims {size} bytes when decompressed; at most {bound} are allowed"
        )
    if not params.has_checksum:
        raise CodecError("recorded output is corrupt: the zstd frame has no checksum")
    try:
        # With a known content size, zstandard allocates exactly that (checked above) and fails
        # if the frame expands to more, so a lying header cannot blow up memory either.
        return _decompressor().decompress(frame, allow_extra_data=False)
    except (zstandard.ZstdError, ValueError, MemoryError, OverflowError):
        _local.dctx = None  # start the next call from a fresh context
        raise CodecError("recorded output is corrupt: zstd decompression failed") from None


def _stored(data: bytes, bound: int) -> bytes:
    """Return the JSON text of a format-0x02 record, checked against its CRC-32."""
    if len(data) < 5:
        raise CodecError("recorded output is corrupt: truncated before its checksum")
    raw = data[5:]
    if len(raw) > bound:
        raise CodecError(f"recorded output holds {len(raw)} bytes; at most {bound} are allowed")
    if zlib.crc32(raw) != int.from_bytes(data[1:5], "big"):
        raise CodecError("recorded output is corrupt: its checksum does not match")
    return raw


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _check_shape(value: Any) -> None:
    """Raise CodecError where ``_check`` would, for values json.dumps accepted: non-str keys
    (json.dumps turns them into strings) and nesting past MAX_DEPTH. Containers only, no
    recursion, no paths: the cheap test on the way to every record."""
    if type(value) is dict and all(type(key) is str for key in value):
        # The usual record: a dict whose values are scalars needs no walk.
        for child in value.values():
            if isinstance(child, _CONTAINERS):
                break
        else:
            return
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if item and depth >= MAX_DEPTH:
                raise CodecError("too deep")
            for key, child in item.items():
                if not isinstance(key, str):
                    raise CodecError("non-str key")
                if isinstance(child, dict | list | tuple):
                    stack.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            if item and depth >= MAX_DEPTH:
                raise CodecError("too deep")
            stack.extend(
                (child, depth + 1) for child in item if isinstance(child, dict | list | tuple)
            )


def _check(value: Any, path: str, depth: int, redact: bool) -> None:
    """Raise CodecError naming the first place where ``value`` is not strict JSON."""
    if depth > MAX_DEPTH:
        raise CodecError(f"recorded output is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CodecError(f"recorded output has a non-finite number ({value!r}) at {path}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", depth + 1, redact)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CodecError(
                    f"recorded output has a non-str dict key of type {type(key).__name__} "
                    f"at {path}; JSON object keys are strings"
                )
            _check(item, f"{path}.{'*' if redact else key}", depth + 1, redact)
        return
    raise CodecError(
        f"recorded output is not JSON-serialisable: a value of type {type(value).__name__} "
        f"at {path} (use str, int, float, bool, None, list or dict)"
    )
