"""DAGs: module-level functions that build a Workflow, optionally on a cron schedule."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from croniter import croniter

from flowpro.errors import ConfigError, GraphError
from flowpro.graph.workflow import Workflow
from flowpro.job import utcnow

log = logging.getLogger("flowpro.dag")

_DAGS: dict[str, Dag] = {}


class Dag:
    """A named function returning a Workflow; ``flowpro run`` inserts it on its schedule.

    Calling the Dag builds the workflow. A function that takes one parameter receives the
    tick (the logical run time, an aware UTC datetime; the current time when triggered by
    hand), like Airflow's logical date.

    Example:
        >>> @dag(schedule="0 2 * * *")
        ... def nightly():
        ...     return Workflow(name="nightly")   # add steps here
        >>> nightly.name, nightly.schedule
        ('nightly', '0 2 * * *')
    """

    def __init__(
        self,
        fn: Callable[..., Workflow],
        *,
        name: str,
        schedule: str | None,
        description: str | None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.schedule = schedule
        self.description = description
        self.module = fn.__module__
        self._takes_tick = bool(inspect.signature(fn).parameters)

    def __call__(self, tick: datetime | None = None) -> Workflow:
        """Build the workflow (for ``tick``, default now, when the function takes it)."""
        wf = self.fn(tick if tick is not None else utcnow()) if self._takes_tick else self.fn()
        if not isinstance(wf, Workflow):
            raise GraphError(f"DAG {self.name!r} returned {type(wf).__name__}, not a Workflow")
        if wf.name is None:
            wf.name = self.name
        return wf

    def __repr__(self) -> str:
        return f"Dag(name={self.name!r}, schedule={self.schedule!r}, module={self.module!r})"


def dag(
    fn: Callable[..., Workflow] | None = None,
    *,
    schedule: str | None = None,
    name: str | None = None,
    description: str | None = None,
) -> Any:
    """Declare a DAG: a function returning a ``Workflow``, named after the function.

    Args:
        schedule: a cron expression; ``flowpro run`` inserts the DAG once per tick across
            all nodes (None: only when triggered).
        name: overrides the function's name.
        description: shown by ``flowpro dags list`` (default: the docstring's first line).

    Raises:
        ConfigError: the schedule is not a valid cron expression.

    Example:
        >>> @dag(schedule="*/15 * * * *")
        ... def refresh():
        ...     return Workflow()   # add steps here
    """

    def wrap(func: Callable[..., Workflow]) -> Dag:
        label = name or func.__name__
        if schedule is not None and (
            not isinstance(schedule, str) or not croniter.is_valid(schedule)
        ):
            raise ConfigError(f"DAG {label!r}: schedule {schedule!r} is not a cron expression")
        doc = (func.__doc__ or "").strip().splitlines()
        built = Dag(
            func,
            name=label,
            schedule=schedule,
            description=description or (doc[0] if doc else None),
        )
        previous = _DAGS.get(label)
        if previous is not None and previous.module not in (built.module, "__main__"):
            log.warning(
                "DAG %r from %s replaces the one from %s", label, built.module, previous.module
            )
        _DAGS[label] = built
        return built

    if fn is not None:
        return wrap(fn)
    return wrap


def registered_dags() -> list[Dag]:
    """Return every DAG declared in this process, sorted by name."""
    return [_DAGS[name] for name in sorted(_DAGS)]


def find_dag(name: str) -> Dag:
    """Return the DAG called ``name``.

    Raises:
        ConfigError: no such DAG was loaded (the message lists the known ones).
    """
    try:
        return _DAGS[name]
    except KeyError:
        known = ", ".join(sorted(_DAGS)) or "none"
        raise ConfigError(f"no DAG named {name!r} is loaded (known: {known})") from None
