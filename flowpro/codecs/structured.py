"""Structured args: a pydantic model that validates job args on insert and loads them to run.

Pipeline: ``validate`` (insert: dict or model -> JSON-ready dict) and ``load`` (execute: stored
dict -> model instance). Unknown keys are always refused, so a typo like ``urll`` fails at
insert instead of being dropped silently; only a model that sets ``extra="allow"`` itself keeps
unknown keys. Messages name keys and never include values, so they are safe for encrypted args.
"""

from __future__ import annotations

import difflib
import functools
import json
import keyword
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, JsonValue, RootModel, ValidationError, create_model

from flowpro.errors import ArgsError, ConfigError

_OPTION_KEYS = ("keys", "required")
M = TypeVar("M", bound=BaseModel)


def spec_from_option(option: Any, label: str) -> type[BaseModel]:
    """Return the args model of a ``structured=`` worker option.

    Args:
        option: a pydantic model class, or ``dict(keys=[...], required=[...])`` where ``keys``
            (mandatory, non-empty) lists every allowed key and ``required`` (optional) the ones
            that must be present. Values of the dict form are any JSON value; absent optional
            keys are ``None``.
        label: the worker name, used in error messages.

    Returns:
        A pydantic model class (the given one, or one built for the dict form).

    Raises:
        ConfigError: the option is malformed; the message names the offending key.

    Example:
        >>> Args = spec_from_option(dict(keys=["a", "b"], required=["a"]), "app.Send")
        >>> Args(a=1).b is None
        True
    """
    prefix = f"structured option of worker {label!r}"
    if isinstance(option, type) and issubclass(option, BaseModel):
        if issubclass(option, RootModel):
            raise ConfigError(f"{prefix}: a RootModel cannot hold keyword args; use a BaseModel")
        return option
    if not isinstance(option, Mapping):
        raise ConfigError(
            f"{prefix} must be a pydantic model class or dict(keys=[...], required=[...]), "
            f"got {type(option).__name__}"
        )
    for name in option:
        if name not in _OPTION_KEYS:
            raise ConfigError(f"{prefix} has unknown key {name!r}; expected 'keys' and 'required'")
    if "keys" not in option:
        raise ConfigError(f"{prefix} needs 'keys': the list of allowed arg keys")
    keys = _names(option["keys"], f"{prefix}: 'keys'")
    if not keys:
        raise ConfigError(f"{prefix}: 'keys' must not be empty")
    required = _names(option.get("required", []), f"{prefix}: 'required'")
    for name in keys:
        _check_field_name(name, prefix)
    for name in required:
        if name not in keys:
            raise ConfigError(f"{prefix}: required key {name!r} is not in keys {keys!r}")
    fields: dict[str, Any] = {
        name: (JsonValue, ...) if name in required else (JsonValue, None) for name in keys
    }
    model_name = label.rsplit(".", 1)[-1] + "Args"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            model: type[BaseModel] = create_model(
                model_name, __config__=ConfigDict(extra="forbid"), **fields
            )
        except (Warning, TypeError, ValueError, NameError) as exc:
            raise ConfigError(f"{prefix}: cannot build an args model: {exc}") from None
    return model


def validate(model: type[BaseModel], args: Any, *, redact: bool = False) -> dict[str, Any]:
    """Validate args for insert and return them as a JSON-ready dict.

    Args:
        model: the worker's args model (from ``spec_from_option``).
        args: a dict, or an instance of ``model``.
        redact: name keys and error kinds only, never a validator's message (for encrypted
            workers, whose custom validators might echo a value).

    Returns:
        ``model_dump(mode="json", by_alias=True)`` of the validated args.

    Raises:
        ArgsError: listing every problem: unknown keys, missing required keys, wrong types.

    Example:
        >>> Args = spec_from_option(dict(keys=["url"], required=["url"]), "app.Fetch")
        >>> try:  # doctest: +ELLIPSIS
        ...     validate(Args, {"urll": "x"})
        ... except ArgsError as exc:
        ...     print(exc)
        invalid args for FetchArgs: missing required key 'url'; unknown key 'urll' (typo? ...)
    """
    if isinstance(args, model):
        instance: BaseModel = args
    elif isinstance(args, BaseModel):
        raise ArgsError(
            f"args for {_name(model)} must be a dict or a {_name(model)} instance, "
            f"got a {type(args).__name__} instance"
        )
    else:
        instance = load(model, args, redact=redact)
    dumped: dict[str, Any] = instance.model_dump(mode="json", by_alias=True)
    problems = [
        f"key {key!r}: {problem}" for key, value in dumped.items() if (problem := _json(value))
    ]
    if problems:
        raise ArgsError(f"invalid args for {_name(model)}: " + "; ".join(problems))
    return dumped


def load(model: type[M], data: Any, *, redact: bool = False) -> M:
    """Return the model instance for stored (or given) args.

    Args:
        model: the worker's args model.
        data: the args dict.
        redact: as for ``validate``.

    Returns:
        An instance of ``model`` (``job.args`` inside ``process``).

    Raises:
        ArgsError: listing every problem, as ``validate`` does.

    Example:
        >>> Args = spec_from_option(dict(keys=["a"]), "app.Send")
        >>> load(Args, {"a": [1, 2]}).a
        [1, 2]
    """
    if type(data) is not dict and not isinstance(data, Mapping):
        raise ArgsError(
            f"args for {_name(model)} must be a dict (a JSON object) or a {_name(model)} "
            f"instance, got {type(data).__name__}"
        )
    strict = _strict(model)
    names = _plain_names(model) if strict is not model else None
    if names is not None and data.keys() <= names:
        # No unknown key, so the user's class alone decides; the strict subclass is needed
        # only to list every problem when this fails.
        try:
            return model.model_validate(data)
        except ValidationError:
            pass
    try:
        checked = strict.model_validate(data)
        # A forbid-extra subclass found every problem; return the user's own class.
        instance = cast(M, checked) if strict is model else model.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(error, model, redact) for error in exc.errors()]
        raise ArgsError(f"invalid args for {_name(model)}: " + "; ".join(problems)) from None
    return instance


# Helpers


@functools.cache
def _strict(model: type[BaseModel]) -> type[BaseModel]:
    """Return ``model`` or a subclass of it that refuses unknown keys."""
    if model.model_config.get("extra") in ("forbid", "allow"):
        return model
    namespace = {"model_config": ConfigDict(extra="forbid"), "__module__": model.__module__}
    return type(model.__name__, (model,), namespace)


@functools.cache
def _plain_names(model: type[BaseModel]) -> frozenset[str] | None:
    """Return the field names of a model whose fields are set by name only, else None.

    Any alias (or a setting that changes which names validate) returns None: then which keys
    count as unknown is left to pydantic.
    """
    config = model.model_config
    if any(config.get(option) for option in ("populate_by_name", "validate_by_name")):
        return None
    if config.get("alias_generator") is not None or config.get("validate_by_alias") is False:
        return None
    for field in model.model_fields.values():
        if field.alias is not None or field.validation_alias is not None:
            return None
    return frozenset(model.model_fields)


def _problem(error: Any, model: type[BaseModel], redact: bool) -> str:
    loc = error["loc"]
    key = loc[0] if loc else None
    kind = error["type"]
    if kind == "extra_forbidden" and len(loc) == 1:
        hint = "typo?"
        if isinstance(key, str):
            close = difflib.get_close_matches(key, _keys(model), n=1)
            if close:
                hint = f"typo? did you mean {close[0]!r}?"
        return f"unknown key {key!r} ({hint})"
    if kind == "missing" and len(loc) == 1:
        return f"missing required key {key!r}"
    where = f"key {key!r}" if key is not None else "args"
    if kind in ("recursion_loop", "recursion_depth_exceeded"):  # the latter: pydantic >= 2.14
        # pydantic's location would list every level: thousands of characters.
        return f"{where}: nested too deeply to validate"
    if len(loc) > 1:
        where += " at " + ".".join(str(part) for part in loc[1:])
    if redact:
        # A custom validator's message may echo the (secret) value: keep only its kind.
        return f"{where}: invalid ({kind})"
    return f"{where}: {error['msg']}"


def _keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _json(value: Any) -> str | None:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return "contains a non-finite number (NaN or infinity), which JSON cannot hold"
    except (TypeError, RecursionError):
        return "is not a JSON value"
    return None


def _names(value: Any, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"{what} must be a list of str, got {type(value).__name__}")
    names: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ConfigError(f"{what} must be a list of str; {item!r} is a {type(item).__name__}")
        if item in names:
            raise ConfigError(f"{what} lists key {item!r} twice")
        names.append(item)
    return names


def _check_field_name(name: str, prefix: str) -> None:
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise ConfigError(
            f"{prefix}: key {name!r} is not a valid attribute name "
            "(use letters, digits and underscores, not starting with '_')"
        )
    if hasattr(BaseModel, name) or name.startswith("model_"):
        raise ConfigError(
            f"{prefix}: key {name!r} clashes with a pydantic BaseModel attribute; "
            "rename it, or pass a pydantic model with an alias"
        )


def _name(model: type[BaseModel]) -> str:
    return model.__name__
