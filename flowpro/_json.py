"""JSON on the hot path: the standard library's C encoder and scanner, called directly.

``json.dumps`` with options builds a new encoder on every call, and ``json.loads`` runs two
regular expressions around the C scanner; per job (claims decode several JSON columns, Pro
workers encode and decode args and records) that is most of their cost. These helpers build
the C objects once and fall back to the pure ``json`` functions where the C ones are missing
or the fast path does not apply, so results and errors are those of ``json``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from json import encoder as _encoder
from json import scanner as _scanner
from typing import Any

Default = Callable[[Any], Any]

_DECODER = json.JSONDecoder()
_scan_once: Callable[[str, int], tuple[Any, int]] = _scanner.make_scanner(_DECODER)  # type: ignore[arg-type]


def loads(text: str | bytes | bytearray) -> Any:
    """Return the value of a JSON document, as ``json.loads`` does (same values, same errors).

    Example:
        >>> loads('{"a":[1,2.5,null]}')
        {'a': [1, 2.5, None]}
    """
    if not isinstance(text, str):
        data = bytes(text)
        # Most meta, tags and errors columns are empty: skip the scanner for them.
        if data == b"{}":
            return {}
        if data == b"[]":
            return []
        text = data.decode("utf-8")  # UnicodeDecodeError is a ValueError, as in json
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:  # leading whitespace, or not JSON: the full path says which
        return json.loads(text)
    if end != len(text):  # trailing whitespace or extra data
        return json.loads(text)
    return value


def _raise_type_error(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


@functools.lru_cache(maxsize=32)
def _encoder_for(ascii_only: bool, default: Default | None) -> Callable[[Any], str]:
    fallback = json.JSONEncoder(
        ensure_ascii=ascii_only,
        separators=(",", ":"),
        allow_nan=False,
        default=default,
    )
    make: Any = getattr(_encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has the C encoder
        return fallback.encode
    quote: Any = getattr(
        _encoder, "c_encode_basestring_ascii" if ascii_only else "c_encode_basestring", None
    )
    if quote is None:  # pragma: no cover
        return fallback.encode
    # No markers (they would be shared by every call, and by threads): a circular value
    # recurses until RecursionError, and the standard encoder then names the problem.
    encode = make(None, default or _raise_type_error, quote, None, ":", ",", False, False, False)

    def dumps(value: Any) -> str:
        if isinstance(value, str):
            return quote(value)  # type: ignore[no-any-return]
        try:
            return "".join(encode(value, 0))
        except RecursionError:
            return fallback.encode(value)  # "Circular reference detected", or RecursionError

    return dumps


def compact(value: Any, *, ascii_only: bool = True, default: Default | None = None) -> str:
    """Return ``value`` as compact strict JSON: ``json.dumps(value, separators=(",", ":"),
    allow_nan=False, ensure_ascii=ascii_only, default=default)``, at a fraction of its cost.

    ``default`` must be a long-lived function (encoders are cached per function).

    Raises:
        ValueError: a NaN or infinity, or a circular reference.
        TypeError: a value that is not JSON (unless ``default`` turns it into one).

    Example:
        >>> compact({"a": [1, "é"]}, ascii_only=False)
        '{"a":[1,"é"]}'
    """
    return _encoder_for(ascii_only, default)(value)
