"""A small nightly ETL run on flowpro: insert jobs, run a node until they are done, show them.

    python examples/jobs.py

Uses the embedded SQLite default (``sqlite:///flowpro.db`` in the current folder) unless
``$FLOWPRO_DATABASE_URL`` names another database, e.g. ``postgresql://root@127.0.0.1/test``.

What it shows, in a few seconds:

* ``Extract`` runs once per day (sync workers run in a thread pool);
* ``FetchRates`` fails on its first attempt (a flaky upstream API) and is retried one second
  later: its ``backoff()`` override replaces the default exponential backoff;
* ``AwaitExport`` is ``async def`` and returns ``Snooze(1)`` while a partner's export is "not
  ready": the job runs again a second later and the snooze does not count as a failure;
* ``Extract`` for a holiday returns ``Cancel(...)``: nothing to do, no retries;
* ``Load`` is scheduled two seconds ahead (``schedule_in=2``) and runs when it is due.

When run as a script, the workers are stored as ``__main__.Extract`` and so on. That is fine
here because the same process inserts and runs them; application code imports its workers
from a module (or pins ``name="..."``) so that every node finds them under the same name.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

import flowpro

console = Console()

QUEUES = {"etl": 5, "io": 5}
HOLIDAYS = {"2024-06-02"}
FINISHED = {flowpro.JobState.COMPLETED, flowpro.JobState.CANCELLED, flowpro.JobState.DISCARDED}


def rows_for(day: str) -> int:
    """Return a made-up but stable row count for a day."""
    return 1_000 + int(hashlib.sha256(day.encode()).hexdigest(), 16) % 9_000


# Workers


class Extract(flowpro.Worker, queue="etl", max_attempts=3, tags=["extract"]):
    """Pull one day of orders from the (pretend) source system."""

    def process(self, job: flowpro.Job) -> Any:
        day = job.args["day"]
        if day in HOLIDAYS:
            return flowpro.Cancel(f"no orders on {day} (holiday)")
        time.sleep(0.2)  # the "download"
        rows = rows_for(day)
        console.print(f"  [cyan]extract[/] {day}: {rows:,} rows")
        return {"day": day, "rows": rows}


class FetchRates(flowpro.Worker, queue="io", max_attempts=5):
    """Fetch currency rates from a flaky API: the first attempt times out."""

    def process(self, job: flowpro.Job) -> Any:
        if job.attempt == 1:
            raise ConnectionError("rates API timed out after 30s")
        console.print(f"  [cyan]rates[/] {job.args['currency']}: fetched on attempt {job.attempt}")
        return {"EUR": 1.0, "USD": 1.08}

    def backoff(self, job: flowpro.Job) -> float:
        # The default is exponential with jitter (about 17 s first); one second suits a demo.
        return 1.0


class AwaitExport(flowpro.Worker, queue="io"):
    """Wait for a partner's nightly export; snooze until it is there (async worker)."""

    async def process(self, job: flowpro.Job) -> Any:
        await asyncio.sleep(0.05)  # "ask the partner's API"
        if job.attempt == 1:
            console.print(f"  [yellow]export[/] {job.args['partner']}: not ready, snoozing 1s")
            return flowpro.Snooze(1)
        console.print(f"  [cyan]export[/] {job.args['partner']}: ready")
        return None


class Load(flowpro.Worker, queue="etl", priority=1):
    """Load the extracted days into the warehouse."""

    def process(self, job: flowpro.Job) -> Any:
        console.print(f"  [cyan]load[/] {len(job.args['days'])} days into {job.args['table']}")
        return None


# Running


def run_until_finished(fp: flowpro.FlowPro, ids: list[int], *, limit: float = 60.0) -> bool:
    """Run a node until every job in ``ids`` has finished; False if ``limit`` seconds pass first.

    ``fp.run(until_idle=True)`` returns as soon as nothing is runnable *now*; a job waiting out
    a retry backoff, a snooze or ``schedule_in`` is due later and does not keep the node
    busy. So wait for the next due job and run again.
    """
    deadline = time.monotonic() + limit
    while True:
        fp.run(queues=QUEUES, until_idle=True)
        waiting = [j for j in (fp.get_job(i) for i in ids) if j and j.state not in FINISHED]
        if not waiting:
            return True
        pause = (min(j.scheduled_at for j in waiting) - datetime.now(UTC)).total_seconds()
        pause = min(max(pause, 0.0), deadline - time.monotonic())
        if pause < 0:
            return False
        console.print(f"  [dim]idle; {len(waiting)} job(s) due in {pause:.1f}s[/]")
        time.sleep(pause)


def show(fp: flowpro.FlowPro, ids: list[int], seconds: float) -> None:
    """Print one table row per job: what ran, how often, and what went wrong."""
    table = Table(
        title=f"flowpro ETL example: {len(ids)} jobs in {seconds:.1f}s",
        caption=f"{shown(fp.url)}; worker names are stored as __main__.<Name>",
    )
    table.add_column("id", justify="right")
    table.add_column("worker", no_wrap=True)
    table.add_column("args")
    table.add_column("state", no_wrap=True)
    table.add_column("attempt", justify="right")
    table.add_column("errors", ratio=1, overflow="fold")
    colours = {"completed": "green", "cancelled": "yellow", "discarded": "red"}
    counts: dict[str, int] = {}
    for job_id in ids:
        job = fp.get_job(job_id)
        if job is None:
            continue
        state = str(job.state)
        errors = "\n".join(f"#{e['attempt']} {e['kind']}: {e['error']}" for e in job.errors)
        table.add_row(
            str(job.id),
            job.worker.removeprefix("__main__."),
            ", ".join(f"{k}={brief(v)}" for k, v in job.args.items()),
            f"[{colours.get(state, 'white')}]{state}[/]",
            str(job.attempt),
            errors or "-",
        )
        counts[state] = counts.get(state, 0) + 1
    console.print(table)
    console.print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))


def shown(url: str) -> str:
    """Return the database URL without its password."""
    return make_url(url).render_as_string(hide_password=True)


def brief(value: Any) -> str:
    """Return a short display form of an argument value."""
    if isinstance(value, list):
        return f"[{len(value)} items]"
    return str(value)


def main() -> None:
    fp = flowpro.FlowPro()  # $FLOWPRO_DATABASE_URL, else sqlite:///flowpro.db
    fp.migrate()  # safe to repeat; the SQLite default would also migrate itself

    start = date(2024, 6, 1)
    days = [(start + timedelta(days=n)).isoformat() for n in range(4)]
    jobs = fp.insert_all(  # one transaction: all of them or none
        [
            *(Extract.new({"day": day}) for day in days),
            FetchRates.new({"currency": "EUR"}),
            AwaitExport.new({"partner": "acme"}),
            Load.new({"table": "orders", "days": days}, schedule_in=2),
        ]
    )
    ids = [job.id for job in jobs]
    console.print(f"inserted {len(ids)} jobs into {shown(fp.url)}; running a node until done")

    began = time.monotonic()
    try:
        finished = run_until_finished(fp, ids)
        show(fp, ids, time.monotonic() - began)
    finally:
        fp.close()
    if not finished:
        raise SystemExit("some jobs did not finish within a minute")
    console.print("Inspect them later with: flowpro jobs list")


if __name__ == "__main__":
    main()
