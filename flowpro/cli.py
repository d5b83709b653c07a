"""The ``flowpro`` command line: run a node, migrate, manage jobs, DAGs and workflows, make keys.

Every command reads ``--database-url``, else ``$FLOWPRO_DATABASE_URL``, else
``sqlite:///flowpro.db``. Exit codes: 0 success, 1 a database or job problem (unreachable,
no schema, no such job), 2 bad input (options, settings, DAG files that fail to import).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click
from croniter import croniter
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flowpro import _loader
from flowpro._runtime.node import NodeConfig
from flowpro.app import DEFAULT_CONCURRENCY, FlowPro, default_queues
from flowpro.codecs.encrypted import generate_key
from flowpro.errors import ConfigError, FlowproError, GraphError
from flowpro.graph.dag import Dag, find_dag, registered_dags
from flowpro.graph.workflow import Workflow
from flowpro.job import Job, JobState, utcnow
from flowpro.storage import open_storage, resolve_url
from flowpro.storage.base import Storage

log = logging.getLogger("flowpro.cli")

SETTINGS_ENV = "FLOWPRO_SETTINGS"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
STATES = [str(s) for s in JobState]
STOPPER = "flowpro-stop"
GRAPH_FORMATS = ("mermaid", "dot", "json", "svg")
_SUFFIX_FORMATS = {
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".dot": "dot",
    ".gv": "dot",
    ".json": "json",
    ".svg": "svg",
}

# Set by `run` when attempts handed back at shutdown still occupy worker threads: `main` then
# ends the process without waiting for them (the interpreter would otherwise join them).
_abandoned_threads = False


class CliError(click.ClickException):
    """A one-line error for the user, with its exit code (1: database or job, 2: input)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        # Newer click declares exit_code a ClassVar; an instance attribute still overrides it.
        vars(self)["exit_code"] = code


# Shared options and helpers


def database_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--database-url`` (else ``$FLOWPRO_DATABASE_URL``, else the SQLite default)."""
    return click.option(
        "--database-url",
        "database_url",
        metavar="URL",
        default=None,
        help="sqlite:///PATH or postgresql://...; default $FLOWPRO_DATABASE_URL, "
        "else sqlite:///flowpro.db.",
    )(fn)


def safe_url(url: str) -> str:
    """Return the URL with its password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _scrub(message: str, url: str) -> str:
    """Hide the URL's password anywhere in a message."""
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        password = None
    return message.replace(str(password), "***") if password else message


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Turn database failures into a one-line message and exit code 1 (no traceback)."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, click.ClickException) or not _is_database_error(exc):
            raise
        message = _scrub(_one_line(exc), url)
        where = safe_url(url)
        if where not in message and url not in message:
            message = f"database {where}: {message}"
        raise CliError(message, 1) from exc


def _is_database_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(exc, FlowproError | SQLAlchemyError | OSError)


def open_app(url: str, **settings: Any) -> FlowPro:
    """Return a FlowPro whose database answers and has flowpro's current schema.

    Raises:
        CliError: the URL is invalid, the database is down, or the schema is missing or old.
    """
    with database_errors(url):
        app = FlowPro(url, **settings)
        storage = app.storage  # SQLite migrates itself here
        if not storage.schema_is_current():
            app.close()
            raise CliError(
                f"database {safe_url(url)} has no current flowpro schema; "
                f"run: flowpro migrate --database-url '{safe_url(url)}'",
                1,
            )
    return app


def console() -> Console:
    """A console that does not squeeze tables when output is not a terminal."""
    out = Console()
    if not out.is_terminal:
        out = Console(width=200, soft_wrap=False)
    return out


# The group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flowpro", prog_name="flowpro")
def cli() -> None:
    """flowpro: durable background jobs and workflows on SQLite and PostgreSQL."""


# run


def parse_queues(value: str | Sequence[str] | None) -> dict[str, int] | None:
    """Parse ``etl=10,default=5`` (given once or several times) into ``{queue: limit}``.

    Raises:
        ConfigError: an entry is not ``NAME=LIMIT`` with a positive int, or a name repeats.

    Example:
        >>> parse_queues("etl=10,default=5")
        {'etl': 10, 'default': 5}
    """
    if value is None:
        return None
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        return None
    plan: dict[str, int] = {}
    for text in texts:
        for raw in text.split(","):
            entry = raw.strip()
            name, sep, limit = (part.strip() for part in entry.partition("="))
            if not entry:
                raise ConfigError(f"empty entry in {text!r}: expected NAME=LIMIT[,NAME=LIMIT...]")
            if not sep or not name or not limit:
                raise ConfigError(f"malformed entry {entry!r}: expected NAME=LIMIT, e.g. etl=10")
            if any(c.isspace() for c in name):
                raise ConfigError(f"queue name {name!r} contains whitespace")
            try:
                count = int(limit)
            except ValueError:
                raise ConfigError(
                    f"queue {name!r}: limit {limit!r} is not a whole number"
                ) from None
            if count < 1:
                raise ConfigError(f"queue {name!r}: limit must be at least 1, got {count}")
            if name in plan:
                raise ConfigError(f"queue {name!r} is given twice")
            plan[name] = count
    return plan


def parse_settings(
    pairs: Sequence[str], env: Mapping[str, str] | None = None, **explicit: Any
) -> dict[str, Any]:
    """Merge node settings: ``$FLOWPRO_SETTINGS`` (a JSON object), then ``KEY=VALUE`` pairs
    (values parsed as JSON when they can be), then explicit options that are not None.

    A ``rescue_after`` shorter than the default heartbeat also shortens the heartbeat (to a
    quarter of it), unless ``heartbeat_interval`` is set too.

    Raises:
        ConfigError: unknown setting, malformed pair or JSON, or a value NodeConfig refuses.

    Example:
        >>> parse_settings(["rescue_after=1"], env={})
        {'rescue_after': 1, 'heartbeat_interval': 0.25}
    """
    fields = NodeConfig.model_fields
    environ = os.environ if env is None else env
    settings: dict[str, Any] = {}
    raw_env = environ.get(SETTINGS_ENV, "").strip()
    if raw_env:
        try:
            loaded = json.loads(raw_env)
        except ValueError as exc:
            raise ConfigError(f"${SETTINGS_ENV} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f'${SETTINGS_ENV} must be a JSON object, e.g. {{"rescue_after": 1}}')
        settings.update(loaded)
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"malformed --setting {pair!r}: expected KEY=VALUE")
        try:
            settings[key] = json.loads(text)
        except ValueError:
            settings[key] = text.strip()
    settings.update({k: v for k, v in explicit.items() if v is not None})
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; known settings: {', '.join(fields)}")
    default_beat = fields["heartbeat_interval"].default
    rescue = settings.get("rescue_after")
    if (
        "heartbeat_interval" not in settings
        and isinstance(rescue, int | float)
        and 0 < rescue <= default_beat
    ):
        settings["heartbeat_interval"] = rescue / 4
    try:
        NodeConfig(**settings)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid node settings: {problems}") from None
    return settings


def _bad_input(exc: ConfigError) -> NoReturn:
    raise CliError(str(exc), 2) from exc


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "-m", "--module", "modules", multiple=True, metavar="MODULE",
    help="Import a module by dotted name (repeatable).",
)  # fmt: skip
@database_option
@click.option(
    "-q", "--queues", "queues", multiple=True, metavar="NAME=N,...",
    help="Queues and their concurrency, e.g. etl=10,default=5. Default: every queue the "
    f"loaded workers name, {DEFAULT_CONCURRENCY} each.",
)  # fmt: skip
@click.option(
    "--until-idle", is_flag=True,
    help="Exit 0 once nothing in these queues is available, executing or waiting to run.",
)  # fmt: skip
@click.option("--node", "node", metavar="NAME", help="Node name prefix (default: host name).")
@click.option(
    "--shutdown-grace", type=float, metavar="SECONDS",
    help="On SIGTERM/SIGINT, how long running jobs may finish before being handed back "
    "(default 15).",
)  # fmt: skip
@click.option(
    "--rescue-after", type=float, metavar="SECONDS",
    help="Rescue jobs of nodes silent for this long (default 10).",
)  # fmt: skip
@click.option(
    "--poll-interval", type=float, metavar="SECONDS",
    help="How often idle queues look for work (default 0.05 on SQLite, 1 on PostgreSQL).",
)  # fmt: skip
@click.option(
    "-s", "--setting", "settings", multiple=True, metavar="KEY=VALUE",
    help=f"Any NodeConfig field, e.g. -s heartbeat_interval=0.1 (repeatable; also "
    f"${SETTINGS_ENV} as a JSON object).",
)  # fmt: skip
@click.option(
    "--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="INFO",
    show_default=True, help="Logging level (logs go to stderr).",
)  # fmt: skip
def run(
    paths: tuple[str, ...],
    modules: tuple[str, ...],
    database_url: str | None,
    queues: tuple[str, ...],
    until_idle: bool,
    node: str | None,
    shutdown_grace: float | None,
    rescue_after: float | None,
    poll_interval: float | None,
    settings: tuple[str, ...],
    log_level: str,
) -> None:
    """Start a node: run jobs, stage scheduled ones, rescue orphans, prune old ones.

    PATHS are DAG/worker files or folders (every *.py inside, recursively, except names
    starting with _); default $FLOWPRO_DAGS, else ./dags when it exists. SIGTERM or SIGINT
    stops gracefully: no new job starts, running jobs get --shutdown-grace seconds to
    finish, the rest are handed back to the queue. A second signal exits at once.
    """
    global _abandoned_threads
    url = resolve_url(database_url)
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("flowpro").setLevel(log_level.upper())
    if log_level.upper() != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        plan = parse_queues(queues)
        node_settings = parse_settings(
            settings,
            shutdown_grace=shutdown_grace,
            rescue_after=rescue_after,
            poll_interval=poll_interval,
        )
        _loader.load(list(paths) or _loader.default_paths(), modules)
        if plan is None:
            plan = default_queues()
            if not plan:
                raise ConfigError(
                    "no queues to run: no worker was loaded; pass DAG/worker PATHS, "
                    "-m MODULE or --queues NAME=N"
                )
    except ConfigError as exc:
        _bad_input(exc)

    app = open_app(url, node=node, **node_settings)
    requested = threading.Event()
    restore = _install_signal_handlers(app, requested)
    try:
        if requested.is_set():
            return
        log.info("flowpro node on %s, queues %s", safe_url(url), plan)
        with database_errors(url):
            app.run(queues=plan, until_idle=until_idle)
    finally:
        restore()
        app.close()
        # Handed-back sync attempts may still be blocked in their threads (pool threads,
        # which the interpreter joins at exit even when they are daemons).
        _abandoned_threads = any(
            t.is_alive() and t is not threading.current_thread() and t.name != STOPPER
            for t in threading.enumerate()
        )


def _install_signal_handlers(app: FlowPro, requested: threading.Event) -> Callable[[], None]:
    """Make SIGTERM/SIGINT stop the node gracefully (a second one exits at once)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if requested.is_set():
            log.warning("%s again: exiting now; unfinished jobs will be rescued", name)
            logging.shutdown()
            os._exit(1)
        log.info("%s: stopping (no new jobs; %gs grace)", name, app.config.shutdown_grace)
        requested.set()
        app.stop()

    finished = threading.Event()

    def keep_stopping() -> None:
        # fp.run() clears its stop flag when it starts: a signal that lands just before that
        # would be lost, so repeat the request until run() has returned.
        requested.wait()
        while not finished.is_set():
            app.stop()
            finished.wait(0.05)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    stopper = threading.Thread(target=keep_stopping, name=STOPPER, daemon=True)
    stopper.start()

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        finished.set()
        requested.set()
        stopper.join(timeout=1)

    return restore


# migrate


@cli.command()
@database_option
def migrate(database_url: str | None) -> None:
    """Create or upgrade flowpro's tables (safe to repeat) and print the schema revision."""
    from flowpro.storage.migrate import current_revision

    url = resolve_url(database_url)
    storage: Storage | None = None
    with database_errors(url):
        try:
            storage = open_storage(url)
            engine = getattr(storage, "engine", None)
            before = current_revision(engine) if engine is not None else None
            storage.migrate()
            after = current_revision(engine) if engine is not None else None
        finally:
            if storage is not None:
                storage.close()
    if before == after:
        click.echo(f"{safe_url(url)}: schema already at revision {after}")
    else:
        click.echo(f"{safe_url(url)}: schema migrated from {before or 'empty'} to revision {after}")


# keygen


@cli.command()
def keygen() -> None:
    """Print a new random Base64-encoded 32-byte key for encrypted workers."""
    click.echo(generate_key())


# jobs


@cli.group()
def jobs() -> None:
    """List, show, retry and cancel jobs."""


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _last_error(job: Job, width: int = 60) -> str:
    if not job.errors:
        return ""
    text = str(job.errors[-1].get("error", "")).splitlines()
    line = text[0] if text else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


@jobs.command("list")
@database_option
@click.option("--state", "states", multiple=True, type=click.Choice(STATES), help="Repeatable.")
@click.option("--queue", "queues", multiple=True, metavar="Q", help="Repeatable.")
@click.option(
    "--worker", "workers", multiple=True, metavar="W",
    help="Stored worker name, e.g. etl.Extract (repeatable).",
)  # fmt: skip
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, metavar="N")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of jobs.")
def list_jobs(
    database_url: str | None,
    states: tuple[str, ...],
    queues: tuple[str, ...],
    workers: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    url = resolve_url(database_url)
    app = open_app(url)
    try:
        with database_errors(url):
            found = app.list_jobs(
                state=list(states), queue=list(queues), worker=list(workers), limit=limit
            )
    finally:
        app.close()
    if as_json:
        click.echo(_dumps([job.to_dict() for job in found]))
        return
    out = console()
    if not found:
        out.print("no jobs match")
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "STATE", "QUEUE", "WORKER", "ATTEMPT", "PRI", "SCHEDULED (UTC)"):
        table.add_column(column, no_wrap=True, justify="right" if column == "ID" else "left")
    table.add_column("LAST ERROR", overflow="ellipsis", max_width=60)
    for job in found:
        table.add_row(
            str(job.id),
            _styled_state(job.state),
            escape(job.queue),
            escape(job.worker),
            f"{job.attempt}/{job.max_attempts}",
            str(job.priority),
            _time(job.scheduled_at),
            escape(_last_error(job)),
        )
    out.print(table)
    out.print(
        f"{len(found)} job(s)" + (f" (--limit {limit} reached)" if len(found) == limit else "")
    )


_STATE_STYLES = {
    "completed": "green",
    "executing": "cyan",
    "available": "blue",
    "retryable": "yellow",
    "discarded": "red",
    "cancelled": "magenta",
}


def _styled_state(state: JobState) -> str:
    style = _STATE_STYLES.get(str(state))
    return f"[{style}]{state}[/]" if style else str(state)


def _get(app: FlowPro, url: str, job_id: int) -> Job:
    with database_errors(url):
        job = app.get_job(job_id)
    if job is None:
        raise CliError(f"no job with id {job_id}", 1)
    return job


@jobs.command("show")
@click.argument("job_id", type=int, metavar="ID")
@database_option
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def show_job(job_id: int, database_url: str | None, as_json: bool) -> None:
    """Show every field of one job, and its errors."""
    url = resolve_url(database_url)
    app = open_app(url)
    try:
        job = _get(app, url, job_id)
    finally:
        app.close()
    if as_json:
        click.echo(_dumps(job.to_dict()))
        return
    out = console()
    fields = job.to_dict()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for name, value in fields.items():
        if name == "errors":
            continue
        if name == "state":
            text = _styled_state(job.state)
        elif name == "attempt":
            text = f"{job.attempt} of {job.max_attempts}"
        elif isinstance(value, dict | list):
            text = escape(json.dumps(value, ensure_ascii=False, default=str))
        else:
            text = escape("-" if value is None else str(value))
        if name != "max_attempts":
            grid.add_row(name, text)
    grid.add_row("recorded", f"{len(job.recorded)} bytes" if job.recorded else "-")
    out.print(grid)
    if not job.errors:
        out.print("errors: none")
        return
    out.print(f"errors ({len(job.errors)}):")
    errors = Table(box=None, header_style="bold")
    for column in ("ATTEMPT", "AT", "KIND", "ERROR"):
        errors.add_column(column, overflow="fold")
    for entry in job.errors:
        errors.add_row(
            str(entry.get("attempt", "")),
            escape(str(entry.get("at", ""))),
            escape(str(entry.get("kind", ""))),
            escape(str(entry.get("error", ""))),
        )
    out.print(errors)
    for entry in job.errors:
        if entry.get("traceback"):
            out.print(f"traceback of attempt {entry.get('attempt')}:")
            out.print(escape(str(entry["traceback"]).rstrip()), highlight=False)


def _change_job(
    database_url: str | None, job_id: int, change: Callable[[FlowPro, int], Job | None]
) -> tuple[Job, Job]:
    """Read a job, apply ``change`` to it; return it before and after (exit 1 when missing)."""
    url = resolve_url(database_url)
    app = open_app(url)
    try:
        before = _get(app, url, job_id)
        with database_errors(url):
            job = change(app, job_id)
    finally:
        app.close()
    if job is None:
        raise CliError(f"no job with id {job_id}", 1)
    return before, job


@jobs.command("retry")
@click.argument("job_id", type=int, metavar="ID")
@database_option
def retry_job(job_id: int, database_url: str | None) -> None:
    """Make a finished, scheduled or retryable job available now."""
    before, job = _change_job(database_url, job_id, FlowPro.retry_job)
    if before.state is JobState.AVAILABLE:
        click.echo(f"job {job_id} is already available")
    elif job.state is JobState.AVAILABLE:
        click.echo(f"job {job_id} is available again (was {before.state})")
    else:
        raise CliError(f"job {job_id} is {job.state}: it cannot be retried until it finishes", 1)


@jobs.command("cancel")
@click.argument("job_id", type=int, metavar="ID")
@database_option
def cancel_job(job_id: int, database_url: str | None) -> None:
    """Cancel a job that has not finished (a running attempt's outcome is then ignored)."""
    before, job = _change_job(database_url, job_id, FlowPro.cancel_job)
    if before.state is JobState.CANCELLED:
        click.echo(f"job {job_id} is already cancelled")
    elif job.state is JobState.CANCELLED:
        click.echo(f"job {job_id} cancelled (was {before.state})")
    else:
        raise CliError(f"job {job_id} already finished as {job.state}; nothing to cancel", 1)


# dags


def _load_dags(paths: tuple[str, ...], modules: tuple[str, ...]) -> list[str]:
    """Import the DAG files and modules (default paths when none is given); return what was
    searched, for messages.

    Raises:
        CliError: (exit 2) a file fails to import, or there is nothing to load.
    """
    where = list(paths) or _loader.default_paths()
    if not where and not modules:
        raise CliError(
            "no DAG paths: pass PATHS or -m MODULE, set $FLOWPRO_DAGS, or create ./dags", 2
        )
    try:
        _loader.load(where, modules)
    except ConfigError as exc:
        _bad_input(exc)
    return [*where, *(f"-m {m}" for m in modules)]


def _find_dag(name: str, searched: Sequence[str]) -> Dag:
    try:
        return find_dag(name)
    except ConfigError as exc:
        raise CliError(f"{exc}; searched {', '.join(searched)}", 2) from exc


def _build(found: Dag, tick: datetime) -> Workflow:
    """Call the DAG function and validate its workflow.

    Raises:
        CliError: (exit 2) the function raised, or its workflow is invalid (a cycle...).
    """
    try:
        wf = found(tick)
        wf.plan()
    except FlowproError as exc:
        raise CliError(f"DAG {found.name!r}: {exc}", 2) from exc
    except Exception as exc:
        raise CliError(f"DAG {found.name!r} failed to build: {_loader._describe(exc)}", 2) from exc
    return wf


def next_run(schedule: str | None, now: datetime) -> datetime | None:
    """Return the first tick of ``schedule`` after ``now`` (None for an unscheduled DAG).

    Example:
        >>> next_run("0 2 * * *", datetime(2026, 11, 29, 5, tzinfo=UTC)).isoformat()
        '2026-11-30T02:00:00+00:00'
    """
    if not schedule:
        return None
    tick: datetime = croniter(schedule, now).get_next(datetime)
    return tick


def _parse_tick(value: str | None) -> datetime:
    if value is None:
        return utcnow()
    try:
        tick = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise CliError(
            f"--tick {value!r} is not an ISO 8601 time, e.g. 2026-11-01T06:00:00Z", 2
        ) from None
    return tick.replace(tzinfo=UTC) if tick.tzinfo is None else tick.astimezone(UTC)


def modules_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``-m/--module`` (repeatable), as `run` has it."""
    return click.option(
        "-m", "--module", "modules", multiple=True, metavar="MODULE",
        help="Import a module by dotted name (repeatable).",
    )(fn)  # fmt: skip


paths_argument = click.argument("paths", nargs=-1, type=click.Path(path_type=str))
tick_option = click.option(
    "--tick", metavar="TIME",
    help="The logical run time passed to the DAG (ISO 8601, UTC unless it has an offset); "
    "default now.",
)  # fmt: skip


@cli.group()
def dags() -> None:
    """List, show and trigger DAGs (@flowpro.dag functions in DAG files).

    PATHS are DAG files or folders, as for `flowpro run`; default $FLOWPRO_DAGS, else ./dags.
    """


@dags.command("list")
@paths_argument
@modules_option
@database_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of DAGs.")
def list_dags(
    paths: tuple[str, ...], modules: tuple[str, ...], database_url: str | None, as_json: bool
) -> None:
    """List the DAGs in PATHS: name, schedule, next run, module, description.

    Reads the files only; --database-url is accepted for symmetry and not opened.
    """
    searched = _load_dags(paths, modules)
    now = utcnow()
    found = [(d, next_run(d.schedule, now)) for d in registered_dags()]
    if as_json:
        rows = [
            {
                "name": d.name,
                "schedule": d.schedule,
                "next_run": when.isoformat() if when else None,
                "module": d.module,
                "description": d.description,
            }
            for d, when in found
        ]
        click.echo(_dumps(rows))
        return
    out = console()
    if not found:
        out.print(f"no DAGs in {escape(', '.join(searched))}")
        return
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "SCHEDULE", "NEXT RUN (UTC)", "MODULE"):
        table.add_column(column, no_wrap=True)
    table.add_column("DESCRIPTION", overflow="ellipsis", max_width=70, no_wrap=True)
    for d, when in found:
        table.add_row(
            escape(d.name),
            escape(d.schedule or "-"),
            _time(when) if when else "manual",
            escape(d.module),
            escape(d.description or ""),
        )
    out.print(table)
    out.print(f"{len(found)} DAG(s)")


@dags.command("show")
@click.argument("name")
@paths_argument
@modules_option
@database_option
@click.option(
    "-f", "--format", "fmt", type=click.Choice(GRAPH_FORMATS), default=None,
    help="Default: from the --output suffix (.mmd .dot .gv .json .svg), else mermaid. "
    "svg needs Graphviz's dot.",
)  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), metavar="FILE")
@tick_option
def show_dag(
    name: str,
    paths: tuple[str, ...],
    modules: tuple[str, ...],
    database_url: str | None,
    fmt: str | None,
    output: str | None,
    tick: str | None,
) -> None:
    """Print (or write) the definition graph of DAG NAME.

    The DAG function is called as for a manual trigger (with --tick, default now); nothing
    is inserted and the database is not opened.
    """
    kind = _graph_format(fmt, output)
    when = _parse_tick(tick)
    searched = _load_dags(paths, modules)
    wf = _build(_find_dag(name, searched), when)
    renderers = {"mermaid": wf.to_mermaid, "dot": wf.to_dot, "json": wf.to_json}
    _emit_graph(lambda f: renderers[f](), kind, output)


@dags.command("trigger")
@click.argument("name")
@paths_argument
@modules_option
@database_option
@tick_option
@click.option("--json", "as_json", is_flag=True, help="Print the workflow id and job ids as JSON.")
def trigger_dag(
    name: str,
    paths: tuple[str, ...],
    modules: tuple[str, ...],
    database_url: str | None,
    tick: str | None,
    as_json: bool,
) -> None:
    """Insert DAG NAME's workflow now (whatever its schedule); print its workflow id."""
    url = resolve_url(database_url)
    when = _parse_tick(tick)
    searched = _load_dags(paths, modules)
    found = _find_dag(name, searched)
    # The same context a scheduled run gets, so steps read the tick either way.
    wf = _build(found, when).put_context({"flowpro_tick": when.isoformat()})
    app = open_app(url)
    try:
        with database_errors(url):
            saved = app.insert(wf)
    finally:
        app.close()
    if as_json:
        doc = {
            "dag": found.name,
            "workflow_id": wf.workflow_id,
            "tick": when.isoformat(),
            "steps": len(saved),
            "job_ids": [job.id for job in saved],
        }
        click.echo(_dumps(doc))
        return
    click.echo(f"triggered {found.name}: workflow {wf.workflow_id}, {len(saved)} step(s)")
    click.echo(f"follow it with: flowpro graph {wf.workflow_id}")


# workflows and graph


def _graph_format(fmt: str | None, output: str | None) -> str:
    """Pick the format: --format, else the --output suffix, else mermaid.

    Raises:
        CliError: (exit 2) the two disagree; (exit 1) svg without Graphviz.
    """
    implied = _SUFFIX_FORMATS.get(Path(output).suffix.lower()) if output else None
    if fmt and implied and fmt != implied:
        raise CliError(
            f"--format {fmt} does not match --output {output} (a {implied} file); drop one of them",
            2,
        )
    kind = fmt or implied or "mermaid"
    if kind == "svg":
        _dot_program()
    return kind


def _dot_program() -> str:
    found = shutil.which("dot")
    if found is None:
        raise CliError(
            "SVG needs Graphviz's `dot`, which is not on PATH: install Graphviz "
            "(apt-get install graphviz, brew install graphviz) or use --format mermaid, dot "
            "or json",
            1,
        )
    return found


def to_svg(dot_source: str) -> str:
    """Render DOT as SVG with Graphviz's ``dot -Tsvg``.

    Raises:
        CliError: (exit 1) Graphviz is missing or fails.
    """
    program = _dot_program()
    try:
        # The input is DOT that flowpro wrote; the program is the dot found on PATH.
        done = subprocess.run(  # noqa: S603
            [program, "-Tsvg"], input=dot_source, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CliError(f"Graphviz's dot failed: {exc}", 1) from exc
    if done.returncode != 0:
        raise CliError(f"Graphviz's dot failed: {_one_line(Exception(done.stderr))}", 1)
    return done.stdout


def _emit_graph(render: Callable[[str], str], kind: str, output: str | None) -> None:
    """Render in ``kind`` (svg through DOT) to stdout or to ``output``."""
    text = to_svg(render("dot")) if kind == "svg" else render(kind)
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror or exc}", 2) from exc
    click.echo(f"wrote {output} ({kind})")


@cli.command("graph")
@click.argument("workflow_id")
@database_option
@click.option(
    "-f", "--format", "fmt", type=click.Choice(GRAPH_FORMATS), default=None,
    help="Default: from the --output suffix (.mmd .dot .gv .json .svg), else mermaid. "
    "svg needs Graphviz's dot.",
)  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), metavar="FILE")
def graph_command(
    workflow_id: str, database_url: str | None, fmt: str | None, output: str | None
) -> None:
    """Print (or write) a running or finished workflow with each step's state."""
    kind = _graph_format(fmt, output)
    url = resolve_url(database_url)
    app = open_app(url)
    try:
        with database_errors(url):
            try:
                text = app.workflow_graph(workflow_id, format="dot" if kind == "svg" else kind)
            except GraphError:
                raise CliError(f"no workflow with id {workflow_id}", 1) from None
    finally:
        app.close()
    _emit_graph(lambda _format: text, kind, output)


@cli.group()
def workflows() -> None:
    """Inspect workflow runs (see also `flowpro graph`)."""


@workflows.command("status")
@click.argument("workflow_id")
@database_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def workflow_status(workflow_id: str, database_url: str | None, as_json: bool) -> None:
    """Show a workflow's state, its steps per state, and how long it has run."""
    url = resolve_url(database_url)
    app = open_app(url)
    try:
        with database_errors(url):
            try:
                status = app.workflow_status(workflow_id)
            except GraphError:
                raise CliError(f"no workflow with id {workflow_id}", 1) from None
    finally:
        app.close()
    duration = status.duration
    if as_json:
        doc = {
            "workflow_id": status.workflow_id,
            "name": status.name,
            "state": status.state,
            "counts": status.counts,
            "total": status.total,
            "started_at": status.started_at.isoformat() if status.started_at else None,
            "finished_at": status.finished_at.isoformat() if status.finished_at else None,
            "duration_seconds": duration.total_seconds() if duration is not None else None,
        }
        click.echo(_dumps(doc))
        return
    out = console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    counts = ", ".join(
        f"{_styled_state(JobState(state))} {n}" for state, n in sorted(status.counts.items())
    )
    grid.add_row("workflow", escape(status.workflow_id))
    grid.add_row("name", escape(status.name or "-"))
    grid.add_row("state", _WORKFLOW_STYLES.get(status.state, "{}").format(status.state))
    grid.add_row("steps", f"{status.total}" + (f" ({counts})" if counts else ""))
    grid.add_row("started", _time(status.started_at))
    grid.add_row("finished", _time(status.finished_at))
    took = "-" if duration is None else f"{duration.total_seconds():.3f}s"
    if duration is not None and status.finished_at is None:
        took += " so far"
    grid.add_row("duration", took)
    out.print(grid)


_WORKFLOW_STYLES = {
    "running": "[cyan]{}[/]",
    "completed": "[green]{}[/]",
    "cancelled": "[magenta]{}[/]",
    "discarded": "[red]{}[/]",
}


# Entry point


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``flowpro`` command (the console script)."""
    code: int | str | None = 0
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="flowpro")
    except SystemExit as exc:
        code = exc.code
    if _abandoned_threads:
        # Attempts handed back at shutdown are still blocked in worker threads; their jobs
        # are available again, so leave without joining them.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code if isinstance(code, int) else 1)
    sys.exit(code)


if __name__ == "__main__":
    main()
