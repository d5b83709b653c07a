"""The worker contract: class-keyword options, ``new()``, the registry and backoff. No I/O."""

from __future__ import annotations

import inspect
import json
import math
import random
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from flowpro._json import loads
from flowpro.codecs import encrypted as encrypted_codec
from flowpro.codecs import recorded as recorded_codec
from flowpro.codecs import structured as structured_codec
from flowpro.codecs.encrypted import EncryptedSpec
from flowpro.codecs.recorded import RecordedSpec
from flowpro.errors import ArgsError, ConfigError, DecryptError, RecordMissing, WorkerNotFound
from flowpro.job import Job, JobState, NewJob, encode_json, seconds, utcnow

_REGISTRY: dict[str, type[Worker]] = {}

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 20
DEFAULT_MAX_ARGS_BYTES = 1_000_000


def resolve_worker(name: str) -> type[Worker]:
    """Return the worker class registered under ``name``.

    Raises:
        WorkerNotFound: no class with that name (or alias) was imported in this process.

    Example:
        >>> resolve_worker("billing.Send")   # doctest: +SKIP
        <class 'billing.Send'>
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise WorkerNotFound(name) from None


def registered_workers() -> list[type[Worker]]:
    """Return every registered worker class, each once, sorted by name."""
    return sorted(set(_REGISTRY.values()), key=lambda cls: cls.__flowpro_name__)


def chunk_workers(queue: str | None = None) -> list[type[Worker]]:
    """Return the registered chunk workers of ``queue`` (of every queue when None), by name.

    Example:
        >>> [cls.__flowpro_name__ for cls in chunk_workers("ingest")]  # doctest: +SKIP
        ['app.Ingest']
    """
    return [cls for cls in registered_workers() if cls.is_chunk and queue in (None, cls.queue)]


class Worker:
    """Base class of every worker; options are class keywords.

    Options: ``queue`` (default ``"default"``), ``priority`` (0 highest .. 9), ``max_attempts``
    (default 20), ``timeout`` (seconds or timedelta per attempt), ``tags``, ``name`` (the stored
    name; default ``module.Class``) and ``cron`` (a cron expression: the leader inserts one job
    per tick).

    Example:
        >>> class Fetch(Worker, queue="etl", max_attempts=5):
        ...     def process(self, job):
        ...         return {"rows": 3}
        >>> Fetch.new({"url": "https://x"}).queue
        'etl'
    """

    __flowpro_name__: ClassVar[str] = "flowpro.Worker"
    queue: ClassVar[str] = DEFAULT_QUEUE
    priority: ClassVar[int] = 0
    max_attempts: ClassVar[int] = DEFAULT_MAX_ATTEMPTS
    timeout: ClassVar[float | None] = None
    tags: ClassVar[tuple[str, ...]] = ()
    cron: ClassVar[str | None] = None
    is_async: ClassVar[bool] = False
    structured: ClassVar[type[BaseModel] | None] = None
    recorded: ClassVar[RecordedSpec | None] = None
    encrypted: ClassVar[EncryptedSpec | None] = None
    deadline: ClassVar[float | None] = None
    aliases: ClassVar[tuple[str, ...]] = ()
    max_args_bytes: ClassVar[int] = DEFAULT_MAX_ARGS_BYTES
    # Chunk workers (flowpro.ChunkWorker) process jobs in groups.
    is_chunk: ClassVar[bool] = False
    chunk_size: ClassVar[int] = 100
    chunk_timeout: ClassVar[float] = 1.0

    def __init_subclass__(
        cls,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        tags: Iterable[str] | None = None,
        name: str | None = None,
        cron: str | None = None,
        structured: Any = None,
        recorded: Any = None,
        encrypted: Any = None,
        deadline: float | timedelta | None = None,
        aliases: Iterable[str] | None = None,
        max_args_bytes: int | None = None,
        **options: Any,
    ) -> None:
        label = f"{cls.__module__}.{cls.__qualname__}"
        try:
            super().__init_subclass__(**options)
        except TypeError:
            if not options:
                raise
            raise ConfigError(
                f"{label}: unknown worker option(s) {', '.join(sorted(options))}"
            ) from None
        if queue is not None:
            cls.queue = _check_queue(queue, label)
        if priority is not None:
            cls.priority = _check_priority(priority, label)
        if max_attempts is not None:
            cls.max_attempts = _check_attempts(max_attempts, label)
        if timeout is not None:
            cls.timeout = _check_timeout(timeout, label)
        if tags is not None:
            cls.tags = _check_tags(tags, label)
        if cron is not None:
            cls.cron = _check_cron(cron, label)
        if name is not None and (not isinstance(name, str) or not name or len(name) > 255):
            raise ConfigError(f"{label}: name must be a non-empty string of at most 255 characters")
        cls.__flowpro_name__ = name or label
        # Pro options: None inherits, False switches an inherited option off.
        if structured is not None:
            model = (
                None
                if structured is False
                else structured_codec.spec_from_option(structured, label)
            )
            cls.structured = model
        if recorded is not None:
            cls.recorded = recorded_codec.spec_from_option(recorded, label)
        if encrypted is not None:
            cls.encrypted = encrypted_codec.spec_from_option(encrypted, label)
        if deadline is not None:
            cls.deadline = _check_timeout(deadline, label)
        if max_args_bytes is not None:
            if isinstance(max_args_bytes, bool) or not isinstance(max_args_bytes, int):
                raise ConfigError(f"{label}: max_args_bytes must be an int, got {max_args_bytes!r}")
            if max_args_bytes < 2:
                raise ConfigError(f"{label}: max_args_bytes must be at least 2")
            cls.max_args_bytes = max_args_bytes
        cls.aliases = () if aliases is None else _check_tags(aliases, label)
        cls.is_async = inspect.iscoroutinefunction(cls.process)
        for registered in (cls.__flowpro_name__, *cls.aliases):
            _REGISTRY[registered] = cls

    def process(self, job: Any) -> Any:
        """Do the work of one job (a ``Job``); the return value is the outcome.

        Return a value (the output, recorded when the worker is recorded), ``Snooze``,
        ``Cancel`` or ``Discard``; raise to fail the attempt (it is retried with backoff).
        May be ``async def``. Subclasses annotate ``job: Job``; the parameter is ``Any``
        here so that ``ChunkWorker`` subclasses may take ``jobs: list[Job]`` without
        a type checker calling the override unsafe.
        """
        raise NotImplementedError(f"{type(self).__flowpro_name__} does not define process()")

    def backoff(self, job: Job) -> float:
        """Return the seconds to wait before retrying ``job`` after a failed attempt.

        Exponential in the attempt with 10 % jitter, starting near 17 s and capped at a day.
        Override it for a different policy.

        Example:
            >>> class Quick(Worker):
            ...     def backoff(self, job):
            ...         return 0
        """
        base = min(15.0 + 2.0 ** min(job.attempt, 16), 86_400.0)
        return base * random.uniform(0.9, 1.1)  # noqa: S311 - jitter, not security

    @classmethod
    def new(
        cls,
        args: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        schedule_in: float | timedelta | None = None,
        scheduled_at: datetime | None = None,
        tags: Iterable[str] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> NewJob:
        """Build an unsaved job for this worker; ``fp.insert`` saves it.

        Args:
            args: the job's arguments, a JSON object.
            queue: overrides the worker's queue.
            priority: 0 (highest) .. 9.
            max_attempts: overrides the worker's limit.
            schedule_in: seconds (or a timedelta) from insert until the job may run.
            scheduled_at: an aware datetime at which the job may run.
            tags: labels to find the job by.
            meta: plaintext metadata (JSON object).

        Returns:
            The unsaved job.

        Raises:
            ArgsError: args or meta are not a JSON object of JSON values.
            ConfigError: an option is out of range.

        Example:
            >>> job = Fetch.new({"url": "https://x"}, schedule_in=60, tags=["a"])  # doctest: +SKIP
        """
        label = cls.__flowpro_name__
        if schedule_in is not None and scheduled_at is not None:
            raise ConfigError(f"{label}.new: give schedule_in or scheduled_at, not both")
        if scheduled_at is not None and (
            not isinstance(scheduled_at, datetime) or scheduled_at.tzinfo is None
        ):
            raise ConfigError(f"{label}.new: scheduled_at must be a timezone-aware datetime (UTC)")
        plain_args = cls.dump_args(args)
        args_json = cls.encode_args(plain_args)
        if len(args_json) > cls.max_args_bytes:
            raise ArgsError(
                f"{label}: args are {len(args_json)} bytes of JSON; the limit is "
                f"{cls.max_args_bytes} (raise it with max_args_bytes=, or pass a reference)"
            )
        meta_dict = _check_mapping(meta or {}, "meta", label)
        delay = None if schedule_in is None else _check_delay(schedule_in, label)
        if cls.deadline is not None:
            start = scheduled_at or (utcnow() + timedelta(seconds=delay or 0.0))
            meta_dict.setdefault(
                "deadline_at", (start + timedelta(seconds=cls.deadline)).isoformat()
            )
        job_tags = list(cls.tags) if tags is None else list(_check_tags(tags, label))
        return NewJob(
            worker=label,
            queue=cls.queue if queue is None else _check_queue(queue, label),
            args=plain_args,
            args_json=args_json,
            seal=cls._args_sealer(args_json) if cls.encrypted is not None else None,
            meta=meta_dict,
            meta_json=encode_json(meta_dict, what="meta"),
            tags=job_tags,
            priority=cls.priority if priority is None else _check_priority(priority, label),
            max_attempts=(
                cls.max_attempts if max_attempts is None else _check_attempts(max_attempts, label)
            ),
            schedule_in=delay,
            scheduled_at=scheduled_at,
        )

    # Codec hooks (the Pro worker options override these)

    @classmethod
    def dump_args(cls, args: Mapping[str, Any] | BaseModel | None) -> dict[str, Any]:
        """Return args as a plain dict, validated for this worker (structured: by its model)."""
        if cls.structured is not None:
            return structured_codec.validate(
                cls.structured, {} if args is None else args, redact=cls.encrypted is not None
            )
        return _check_mapping(args or {}, "args", cls.__flowpro_name__)

    @classmethod
    def encode_args(cls, args: dict[str, Any]) -> str:
        """Return the stored encoding of validated args."""
        return encode_json(args)

    @classmethod
    def load_args(cls, job: Job) -> Any:
        """Return the args ``process`` sees: decrypted, then validated into the model.

        Raises:
            DecryptError: encrypted args were tampered with or sealed with an unknown key.
            ArgsError: the args no longer validate against the worker's model.
        """
        args = job.args
        if cls.encrypted is not None:
            plain = encrypted_codec.open_(
                encrypted_codec.from_json(args),
                cls.encrypted.key,
                aad=encrypted_codec.job_aad(job.worker, "args", str(job.id)),
            )
            try:
                args = loads(plain)
            except ValueError:
                raise DecryptError("decrypted args are not JSON") from None
        if cls.structured is not None:
            return structured_codec.load(cls.structured, args, redact=cls.encrypted is not None)
        return args

    @classmethod
    def pack_output(cls, job: Job, value: Any) -> bytes | None:
        """Return the stored form of ``process``'s return value (None: nothing recorded).

        Raises:
            RecordTooLarge: the output is over the worker's recorded limit.
            CodecError: the output is not strict JSON.
        """
        if cls.recorded is None or value is None:
            return None
        return recorded_codec.pack(
            value,
            limit=cls.recorded.limit,
            seal=cls._sealer(job, "recorded"),
            redact=cls.encrypted is not None,
        )

    @classmethod
    def fetch_recorded(cls, job: Job | None) -> Any:
        """Return the value ``process`` recorded for ``job``.

        Args:
            job: a job of this worker, e.g. ``fp.get_job(id)``.

        Returns:
            The recorded value (decrypted for an encrypted worker).

        Raises:
            RecordMissing: nothing is recorded (yet): the job has not completed, returned
                None, or is missing.
            ConfigError: the worker is not recorded.
            DecryptError, CodecError: the stored record is corrupt or was tampered with.

        Example:
            >>> Fetch.fetch_recorded(fp.get_job(job.id))   # doctest: +SKIP
            {'rows': 3}
        """
        if cls.recorded is None:
            raise ConfigError(f"worker {cls.__flowpro_name__!r} is not recorded (recorded=True)")
        if job is None:
            raise RecordMissing("no job: nothing is recorded")
        if job.recorded is None:
            raise RecordMissing(f"job {job.id} has no recorded output (state {job.state})")
        return recorded_codec.unpack(
            job.recorded, limit=cls.recorded.limit, unseal=cls._opener(job, "recorded")
        )

    @classmethod
    def describe_error(
        cls, job: Job, message: str, details: str | None, *, kind: str = "error"
    ) -> dict[str, Any]:
        """Return the parts of an error entry to store; an encrypted worker seals them.

        The message and traceback of an encrypted worker may quote its decrypted args, so they
        are stored encrypted (readable with the key via ``read_error``) and only the exception
        type (for ``kind="error"``, where the message is ``"Type: text"``) or the kind of
        outcome (``cancel``, ``discard``, ...) stays in plaintext.
        """
        if cls.encrypted is None:
            entry = {"error": message}
            if details is not None:
                entry["traceback"] = details
            return entry
        # Only an exception's message starts with its type name; a Cancel or Discard reason
        # is free text that may quote the args, so it is labelled by its kind instead.
        kind = message.split(":", 1)[0] if kind == "error" else _OUTCOME_LABELS.get(kind, kind)
        detail = json.dumps({"error": message, "traceback": details}).encode()
        sealer = cls._sealer(job, "errors")
        assert sealer is not None  # noqa: S101 - encrypted workers always have one
        try:
            sealed = encrypted_codec.to_json(sealer(detail))
        except ConfigError:
            # The key source failed: drop the message rather than store it in plaintext (and
            # never raise here, or the attempt could not be acked).
            return {"error": f"{kind} (message withheld: the encryption key is unavailable)"}
        return {"error": f"{kind} (message encrypted)", "sealed": sealed}

    @classmethod
    def read_error(cls, job: Job, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Return an error entry with an encrypted worker's message decrypted.

        Example:
            >>> SendReceipt.read_error(job, job.errors[-1])["error"]   # doctest: +SKIP
            'RuntimeError: card declined'
        """
        if "sealed" not in entry or cls.encrypted is None:
            return dict(entry)
        opener = cls._opener(job, "errors")
        assert opener is not None  # noqa: S101
        detail: dict[str, Any] = json.loads(opener(encrypted_codec.from_json(entry["sealed"])))
        return {k: v for k, v in entry.items() if k != "sealed"} | detail

    # Encryption helpers

    @classmethod
    def _args_sealer(cls, args_json: str) -> Callable[[int], str]:
        name = cls.__flowpro_name__
        spec = cls.encrypted
        assert spec is not None  # noqa: S101
        plain = args_json.encode()

        def seal(job_id: int) -> str:
            aad = encrypted_codec.job_aad(name, "args", str(job_id))
            envelope = encrypted_codec.seal(plain, spec.key, aad=aad)
            return json.dumps(encrypted_codec.to_json(envelope))

        return seal

    @classmethod
    def _sealer(cls, job: Job, purpose: str) -> Callable[[bytes], bytes] | None:
        spec = cls.encrypted
        if spec is None:
            return None
        # Bound to the name stored with the job (the one its args were sealed under), so a
        # job inserted under an alias still opens after a rename.
        aad = encrypted_codec.job_aad(job.worker, purpose, str(job.id))
        return lambda data: encrypted_codec.seal(data, spec.key, aad=aad)

    @classmethod
    def _opener(cls, job: Job, purpose: str) -> Callable[[bytes], bytes] | None:
        spec = cls.encrypted
        if spec is None:
            return None
        aad = encrypted_codec.job_aad(job.worker, purpose, str(job.id))
        return lambda data: encrypted_codec.open_(data, spec.key, aad=aad)

    # Hooks

    def before_process(self, job: Job) -> None:
        """Run before ``process`` (raising fails the attempt like ``process`` raising).

        Example:
            >>> class Audited(Worker):
            ...     def before_process(self, job):
            ...         print("starting", job.id)
        """

    def after_process(self, state: JobState, job: Job, result: Any) -> None:
        """Run after an attempt with the state it leads to and its result (the return value,
        or the exception raised). Errors here are logged and change nothing.

        Example:
            >>> class Audited(Worker):
            ...     def after_process(self, state, job, result):
            ...         print(job.id, state)
        """

    def on_cancelled(self, job: Job, reason: str) -> None:
        """Run when an attempt ends the job as cancelled (a ``Cancel`` or a passed deadline)."""

    def on_discarded(self, job: Job, reason: str) -> None:
        """Run when an attempt ends the job as discarded (attempts used up, ``Discard``, or
        args that no longer validate or decrypt)."""


_OUTCOME_LABELS = {"cancel": "Cancel", "discard": "Discard", "args": "ArgsError"}

W = TypeVar("W", bound=type[Worker])


def worker(fn: Callable[[Job], Any] | None = None, **options: Any) -> Any:
    """Turn a function ``fn(job)`` into a Worker subclass with the given options.

    The class is named after the function (stored name ``module.function``) and has the same
    ``new()``; the decorated name refers to the class.

    Example:
        >>> @worker(queue="etl", max_attempts=3)
        ... def extract(job):
        ...     return {"rows": 10}
        >>> extract.new({}).worker.endswith("extract")
        True
    """

    def build(func: Callable[[Job], Any]) -> type[Worker]:
        if inspect.iscoroutinefunction(func):

            async def process(self: Worker, job: Job) -> Any:
                return await func(job)

        else:

            def process(self: Worker, job: Job) -> Any:  # type: ignore[misc]
                return func(job)

        namespace = {
            "process": process,
            "__module__": func.__module__,
            "__qualname__": func.__qualname__,
            "__doc__": func.__doc__,
        }
        return type(func.__name__, (Worker,), namespace, **options)

    if fn is not None:
        return build(fn)
    return build


# Option checks


def _check_queue(queue: Any, label: str) -> str:
    if not isinstance(queue, str) or not queue or len(queue) > 100 or "," in queue or "=" in queue:
        raise ConfigError(
            f"{label}: queue must be a non-empty name without ',' or '=', got {queue!r}"
        )
    return queue


def _check_priority(priority: Any, label: str) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise ConfigError(f"{label}: priority must be an int from 0 to 9, got {priority!r}")
    return priority


def _check_attempts(value: Any, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{label}: max_attempts must be an int >= 1, got {value!r}")
    return value


def _check_timeout(value: Any, label: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{label}: timeout must be seconds or a timedelta, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{label}: timeout must be a positive number of seconds, got {value!r}")
    return float(value)


def _check_delay(value: Any, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise ConfigError(f"{label}.new: schedule_in must be seconds or a timedelta, got {value!r}")
    delay = seconds(value)
    if not math.isfinite(delay):
        raise ConfigError(f"{label}.new: schedule_in must be a finite number, got {value!r}")
    return delay


def _check_tags(tags: Iterable[str], label: str) -> tuple[str, ...]:
    if isinstance(tags, str):
        raise ConfigError(f"{label}: tags must be a list of strings, not a string")
    out = tuple(tags)
    for tag in out:
        if not isinstance(tag, str):
            raise ConfigError(f"{label}: tags must be strings, got {tag!r}")
    return out


def _check_cron(expression: str, label: str) -> str:
    from croniter import croniter

    if not isinstance(expression, str) or not croniter.is_valid(expression):
        raise ConfigError(f"{label}: cron expression {expression!r} is not valid")
    return expression


def _check_mapping(value: Any, what: str, label: str) -> dict[str, Any]:
    if hasattr(value, "model_dump") and what == "args":
        value = value.model_dump(mode="json")
    if not isinstance(value, Mapping):
        raise ArgsError(f"{label}: {what} must be a JSON object (dict), got {type(value).__name__}")
    out = dict(value)
    for key in out:
        if not isinstance(key, str):
            raise ArgsError(f"{label}: {what} keys must be strings, got {key!r}")
    return out
