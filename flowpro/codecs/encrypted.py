"""Encryption at rest: AES-256-GCM envelopes bound to their job, with key rotation.

Envelope, version 1 (39 bytes of overhead)::

    b"FP" | 0x01 | key id (8) | nonce (12) | ciphertext | tag (16)

The key id is the first 8 bytes of SHA-256 over a domain label and the key, so it names a key
without revealing it. The associated data is the 11-byte header followed by ``job_aad(...)``,
so changing any header byte, or moving a ciphertext to another job, worker or purpose, fails
authentication. In JSON columns an envelope is stored as ``{"__flowpro_sealed__": "<base64>"}``.
Error messages never contain plaintext or key material.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import importlib
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flowpro.errors import ConfigError, DecryptError

KeySource = Callable[[], Any] | str
"""A zero-argument callable, or a ``"module:function"`` string naming one, that returns one
Base64 32-byte key or a list/tuple of them (the first encrypts, all decrypt)."""

SEALED_KEY = "__flowpro_sealed__"
PURPOSES = ("args", "recorded", "errors")
_MAGIC = b"FP\x01"
_KEY_ID_SIZE = 8
_NONCE_SIZE = 12
_TAG_SIZE = 16
_HEADER_SIZE = len(_MAGIC) + _KEY_ID_SIZE
OVERHEAD = _HEADER_SIZE + _NONCE_SIZE + _TAG_SIZE
_KEY_ID_LABEL = b"flowpro/key-id/v1\x00"
_SOURCE_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_HINT = "generate one with `flowpro keygen`"
# Nonces come from os.urandom in blocks of this many, one block per thread (see _nonce).
_NONCES_PER_BLOCK = 256


@dataclass(frozen=True, slots=True)
class EncryptedSpec:
    """The parsed ``encrypted=`` option: where to get the keys (resolved on every use)."""

    key: KeySource


@dataclass(frozen=True, slots=True, repr=False)
class _Key:
    id: bytes
    aead: AESGCM
    header: bytes  # the envelope header of data sealed with this key: magic, version, id


@dataclass(frozen=True, slots=True)
class Keyring:
    """Resolved keys: the first encrypts, all decrypt. Its repr shows key ids only."""

    keys: tuple[_Key, ...]

    def __repr__(self) -> str:
        return f"Keyring(ids={[key.id.hex() for key in self.keys]})"


def spec_from_option(option: Any, label: str) -> EncryptedSpec | None:
    """Return the encrypted spec of an ``encrypted=dict(key=K)`` option (None: not encrypted).

    The key source's shape is checked here; the key itself is fetched on every use, so a
    process picks up a rotated key without a restart.

    Raises:
        ConfigError: the option is malformed (the message never echoes a key).

    Example:
        >>> spec_from_option(dict(key="myapp.keys:flowpro_key"), "app.Send")
        EncryptedSpec(key='myapp.keys:flowpro_key')
    """
    prefix = f"encrypted option of worker {label!r}"
    if option is None or option is False:
        return None
    if not isinstance(option, Mapping):
        raise ConfigError(f"{prefix} must be dict(key=...), got {type(option).__name__}")
    for name in option:
        if name != "key":
            raise ConfigError(f"{prefix} has unknown key {name!r}; expected 'key'")
    if "key" not in option:
        raise ConfigError(f"{prefix} needs 'key': a callable or 'module:function' string")
    return EncryptedSpec(key=_check_source(option["key"], prefix))


def resolve_keys(source: KeySource | Keyring) -> Keyring:
    """Fetch and check the keys from ``source`` (a Keyring is returned as is).

    Raises:
        ConfigError: the source cannot be imported or called, or returns no key, an empty,
            non-Base64 or wrong-size key. The message never contains the key.

    Example:
        >>> resolve_keys(lambda: [generate_key(), generate_key()])   # doctest: +ELLIPSIS
        Keyring(ids=['...', '...'])
    """
    if isinstance(source, Keyring):
        return source
    try:
        fn, what = _source(source)
    except TypeError:  # an unhashable callable object: not cached
        fn, what = _source.__wrapped__(source)
    try:
        value = fn()
    except Exception as exc:
        # The source's own message might quote a secret; name only the exception type.
        raise ConfigError(f"{what} raised {type(exc).__name__}; it must return a key") from None
    if type(value) is str:  # the common case: one key
        return _keyring((value,), what)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(
            f"{what} returned a {type(value).__name__}; expected a Base64 str or a list of them"
        )
    if not items:
        raise ConfigError(f"{what} returned no keys; {_HINT}")
    if all(type(item) is str for item in items):
        return _keyring(tuple(items), what)
    return _build_keyring(items, what)  # raises ConfigError naming the bad item


def generate_key() -> str:
    """Return a new random Base64 32-byte key.

    Example:
        >>> len(base64.b64decode(generate_key()))
        32
    """
    return base64.b64encode(os.urandom(32)).decode("ascii")


def key_id(key: str) -> str:
    """Return the hex key id of a Base64 key, as stored in envelopes sealed with it."""
    return _key_id(_decode(key, 1, "key")).hex()


def job_aad(worker_name: str, purpose: str, job_identity: str) -> bytes:
    """Return the associated data that binds a ciphertext to one job.

    Args:
        worker_name: the worker's stored name.
        purpose: ``"args"``, ``"recorded"`` or ``"errors"``.
        job_identity: a string known both at insert and at run time, unique per job.

    Example:
        >>> job_aad("app.Send", "args", "n-1")
        b'["flowpro/aad/v1","app.Send","args","n-1"]'
    """
    if not isinstance(job_identity, str):
        raise TypeError(
            f"worker name and job identity must be str, got {type(job_identity).__name__}"
        )
    # Byte for byte json.dumps([...], separators=(",", ":")), at a fraction of its cost.
    return _aad_prefix(worker_name, purpose) + _quote(job_identity).encode("ascii") + b"]"


@functools.lru_cache(maxsize=256)
def _aad_prefix(worker_name: str, purpose: str) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if not isinstance(worker_name, str):
        raise TypeError(
            f"worker name and job identity must be str, got {type(worker_name).__name__}"
        )
    return f'["flowpro/aad/v1",{_quote(worker_name)},"{purpose}",'.encode("ascii")


def seal(plaintext: bytes, keys: KeySource | Keyring, *, aad: bytes) -> bytes:
    """Encrypt ``plaintext`` with the first key; return the envelope.

    Raises:
        ConfigError: the keys are missing or invalid.

    Example:
        >>> key = generate_key()
        >>> box = seal(b"secret", lambda: key, aad=b"job-1")
        >>> open_(box, lambda: key, aad=b"job-1")
        b'secret'
    """
    if type(plaintext) is not bytes:
        if not isinstance(plaintext, bytes | bytearray | memoryview):
            raise TypeError(f"plaintext must be bytes, got {type(plaintext).__name__}")
        plaintext = bytes(plaintext)
    key = resolve_keys(keys).keys[0]
    header = key.header
    nonce = _nonce()
    return b"".join((header, nonce, key.aead.encrypt(nonce, plaintext, header + aad)))


def open_(envelope: bytes, keys: KeySource | Keyring, *, aad: bytes) -> bytes:
    """Decrypt an envelope made by ``seal`` with the same ``aad``; return the plaintext.

    Raises:
        ConfigError: the keys are missing or invalid.
        DecryptError: the envelope is malformed, tampered with, truncated, extended, sealed
            with a key that is not configured, or bound to another job.
    """
    keyring = resolve_keys(keys)
    if type(envelope) is bytes:
        data = envelope
    elif isinstance(envelope, bytearray | memoryview):
        data = bytes(envelope)
    else:
        raise DecryptError(f"sealed data must be bytes, got {type(envelope).__name__}")
    if len(data) < OVERHEAD:
        raise DecryptError("sealed data is truncated: shorter than the envelope header and tag")
    if data[:2] != _MAGIC[:2]:
        raise DecryptError("data is not a flowpro sealed envelope")
    if data[2:3] != _MAGIC[2:]:
        raise DecryptError(f"sealed data has unsupported envelope version {data[2]}")
    header, nonce = data[:_HEADER_SIZE], data[_HEADER_SIZE : _HEADER_SIZE + _NONCE_SIZE]
    kid = header[len(_MAGIC) :]
    candidates = [key for key in keyring.keys if key.id == kid]
    if not candidates:
        raise DecryptError(
            f"sealed with a key that is not configured (key id {kid.hex()}); to rotate keys, "
            "list the new key first and keep the old ones after it"
        )
    for key in candidates:
        try:
            return key.aead.decrypt(nonce, data[_HEADER_SIZE + _NONCE_SIZE :], header + aad)
        except (InvalidTag, ValueError, OverflowError):
            continue
    raise DecryptError(
        "sealed data failed authentication: it was tampered with, truncated or extended, "
        "or belongs to another job or worker"
    )


def to_json(envelope: bytes) -> dict[str, str]:
    """Return the JSON-column form of an envelope.

    Example:
        >>> to_json(b"FP")
        {'__flowpro_sealed__': 'RlA='}
    """
    return {SEALED_KEY: base64.b64encode(envelope).decode("ascii")}


def is_sealed(value: Any) -> bool:
    """Return whether ``value`` is the JSON-column form of an envelope."""
    if type(value) is not dict and not isinstance(value, Mapping):
        return False
    return len(value) == 1 and SEALED_KEY in value


def from_json(value: Any) -> bytes:
    """Return the envelope in a JSON-column value made by ``to_json``.

    Raises:
        DecryptError: the value is not a sealed envelope's JSON form.
    """
    if not is_sealed(value) or not isinstance(value[SEALED_KEY], str):
        raise DecryptError(f"expected encrypted data ({{{SEALED_KEY!r}: ...}}), found plain data")
    try:
        # Strict: only the Base64 alphabet, padding only at the end, nothing after it.
        return binascii.a2b_base64(value[SEALED_KEY], strict_mode=True)
    except (binascii.Error, ValueError):
        raise DecryptError("sealed data is corrupt: not valid Base64") from None


# Nonces


class _NonceBlock(threading.local):
    """This thread's unused nonces: random bytes read from the OS a block at a time."""

    data = b""
    offset = 0
    generation = -1


_nonces = _NonceBlock()
_generation = 0


def _forked() -> None:
    # A forked child must never hand out the parent's remaining nonces.
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forked)


def _nonce() -> bytes:
    """Return a fresh random 96-bit nonce.

    The bytes come from ``os.urandom``, read ``_NONCES_PER_BLOCK`` nonces at a time per thread:
    one system call (and one release of the GIL) per block rather than per encryption. Each
    block is used by one thread only and once, and a forked child starts a new block.
    """
    block = _nonces
    offset = block.offset
    if offset >= len(block.data) or block.generation != _generation:
        block.data = os.urandom(_NONCE_SIZE * _NONCES_PER_BLOCK)
        block.generation = _generation
        offset = 0
    block.offset = offset + _NONCE_SIZE
    return block.data[offset : offset + _NONCE_SIZE]


# Keys


def _check_source(source: Any, what: str) -> KeySource:
    if isinstance(source, str):
        if not _SOURCE_RE.fullmatch(source):
            # Do not echo the string: it may be a raw key pasted into code.
            raise ConfigError(
                f"{what}: a str key source must be 'module:function' naming a function that "
                "returns the key; raw keys do not belong in code"
            )
        return source
    if not callable(source):
        raise ConfigError(
            f"{what}: 'key' must be a zero-argument callable or a 'module:function' str, "
            f"got {type(source).__name__}"
        )
    return source  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=64)
def _source(source: KeySource) -> tuple[Callable[[], Any], str]:
    # Cached: a source is checked (and a string imported) once; it is still called every time.
    what = f"encryption key source {_describe(source)}"
    return _load(_check_source(source, what), what), what


def _load(source: KeySource, what: str) -> Callable[[], Any]:
    if not isinstance(source, str):
        return source
    module_name, _, attr_path = source.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"{what}: cannot import {module_name!r} ({type(exc).__name__})") from None
    for attr in attr_path.split("."):
        target = getattr(target, attr, None)
        if target is None:
            raise ConfigError(f"{what}: {module_name!r} has no attribute {attr_path!r}")
    if not callable(target):
        raise ConfigError(f"{what}: {source!r} is not callable")
    return target  # type: ignore[no-any-return]


def _describe(source: Any) -> str:
    if isinstance(source, str):
        return repr(source) if _SOURCE_RE.fullmatch(source) else "(a str)"
    return repr(getattr(source, "__qualname__", type(source).__name__))


def _decode(item: Any, index: int, what: str) -> bytes:
    name = f"{what}: key #{index}"
    if not isinstance(item, str):
        raise ConfigError(f"{name} is a {type(item).__name__}; expected a Base64 str ({_HINT})")
    text = item.strip()
    if not text:
        raise ConfigError(f"{name} is empty; is the variable or secret that holds it set?")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ConfigError(f"{name} is not valid standard Base64 ({_HINT})") from None
    if len(raw) != 32:
        raise ConfigError(f"{name} decodes to {len(raw)} bytes; AES-256 needs 32 ({_HINT})")
    return raw


@functools.lru_cache(maxsize=64)
def _keyring(items: tuple[str, ...], what: str) -> Keyring:
    # Cached on the strings the source returned: the source is asked on every use (so a
    # rotation takes effect at once), but the same answer is not decoded again.
    return _build_keyring(items, what)


def _build_keyring(items: Sequence[Any], what: str) -> Keyring:
    return Keyring(tuple(_key(_decode(item, index, what)) for index, item in enumerate(items, 1)))


@functools.lru_cache(maxsize=64)
def _key(raw: bytes) -> _Key:
    # Cached so a source resolved on every call does not rebuild the cipher each time.
    key_id = _key_id(raw)
    return _Key(id=key_id, aead=AESGCM(raw), header=_MAGIC + key_id)


def _key_id(raw: bytes) -> bytes:
    return hashlib.sha256(_KEY_ID_LABEL + raw).digest()[:_KEY_ID_SIZE]
