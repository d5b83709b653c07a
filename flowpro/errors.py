"""Errors flowpro raises on purpose.

* FlowproError
  + ConfigError, WorkerNotFound
  + StorageError          driver error kept in ``__cause__``
  + CodecError -> ArgsError, DecryptError, RecordTooLarge, RecordMissing (also a LookupError)
  + GraphError            cycle, unknown dependency, duplicate node
"""

from __future__ import annotations


class FlowproError(Exception):
    """Base class of every error flowpro raises on purpose.

    Example:
        >>> try:
        ...     raise ConfigError("bad")
        ... except FlowproError as exc:
        ...     print(type(exc).__name__)
        ConfigError
    """


class ConfigError(FlowproError):
    """A setting, URL, option or command-line value is invalid.

    Example:
        >>> ConfigError("malformed --queues entry 'etl': expected NAME=LIMIT")
        ConfigError("malformed --queues entry 'etl': expected NAME=LIMIT")
    """


class WorkerNotFound(FlowproError):
    """A job names a worker that is not registered in this process.

    Example:
        >>> str(WorkerNotFound("app.Send"))
        "worker 'app.Send' is not registered; import its module first"
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"worker {name!r} is not registered; import its module first")
        self.name = name


class StorageError(FlowproError):
    """The database failed; the driver's error is kept in ``__cause__``.

    Example:
        >>> StorageError("fetch failed")
        StorageError('fetch failed')
    """


class CodecError(FlowproError):
    """Args or output could not be encoded, decoded, validated or decrypted.

    Example:
        >>> issubclass(ArgsError, CodecError)
        True
    """


class ArgsError(CodecError, ValueError):
    """Job args are invalid: not JSON, unknown or missing keys, wrong types.

    Example:
        >>> ArgsError("args are not JSON-serialisable: set")
        ArgsError('args are not JSON-serialisable: set')
    """


class DecryptError(CodecError):
    """Encrypted data was tampered with, truncated, or sealed with another key.

    Example:
        >>> DecryptError("ciphertext failed authentication")
        DecryptError('ciphertext failed authentication')
    """


class RecordTooLarge(CodecError):
    """A recorded output is larger than the worker's limit.

    Example:
        >>> RecordTooLarge("recorded output is 40000 bytes; the limit is 32000")
        RecordTooLarge('recorded output is 40000 bytes; the limit is 32000')
    """


class RecordMissing(CodecError, LookupError):
    """Nothing is recorded for the job (yet).

    Example:
        >>> isinstance(RecordMissing("job 7 has no recorded output"), LookupError)
        True
    """


class GraphError(FlowproError):
    """A workflow or batch graph is invalid: a cycle, unknown dep or duplicate name.

    Example:
        >>> GraphError("step 'load' depends on unknown step 'clean'")
        GraphError("step 'load' depends on unknown step 'clean'")
    """
