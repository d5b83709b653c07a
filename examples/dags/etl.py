"""Nightly ETL as a DAG: steps pass their recorded outputs along the edges.

    python examples/dags/etl.py                       # trigger, run until done, show the graph

or, the Airflow way, with this folder as the DAG folder:

    flowpro dags show nightly_etl examples/dags --format mermaid
    flowpro dags trigger nightly_etl examples/dags
    flowpro run examples/dags --until-idle

The graph: ``extract:<day>`` for three days (fan-out), ``clean:<day>`` after each (the second
day's source is flaky: the first attempt fails and is retried a second later), ``aggregate``
waits for every clean step and reads their outputs with ``Workflow.all_recorded``, ``load``
writes the totals, and ``report`` reads ``load``'s output with ``Workflow.get_recorded``.
Uses ``sqlite:///flowpro.db`` in the current folder unless ``$FLOWPRO_DATABASE_URL`` is set.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import flowpro
from flowpro import Workflow

DAYS = 3


def _rows(day: str) -> list[dict[str, Any]]:
    seed = int(hashlib.sha256(day.encode()).hexdigest()[:8], 16)
    return [
        {"sku": f"sku-{(seed + i) % 7}", "qty": (seed >> i) % 5, "price": 3 + (seed + i) % 11}
        for i in range(12)
    ]


class Extract(flowpro.Worker, queue="etl", recorded=True):
    """Pull one day's raw order lines from the (pretend) source system."""

    def process(self, job: flowpro.Job) -> dict[str, Any]:
        return {"day": job.args["day"], "rows": _rows(job.args["day"])}


class Clean(flowpro.Worker, queue="etl", recorded=True, max_attempts=3):
    """Drop empty lines and compute revenue; the flaky day fails its first attempt."""

    def backoff(self, job: flowpro.Job) -> float:
        return 1.0

    def process(self, job: flowpro.Job) -> dict[str, Any]:
        day = job.args["day"]
        if job.args.get("flaky") and job.attempt == 1:
            raise ConnectionError(f"source for {day} timed out")
        raw = Workflow.get_recorded(job, f"extract:{day}")
        lines = [r for r in raw["rows"] if r["qty"] > 0]
        revenue = sum(r["qty"] * r["price"] for r in lines)
        return {"day": day, "lines": len(lines), "revenue": revenue}


class Aggregate(flowpro.Worker, queue="etl", recorded=True):
    """Combine every day's cleaned figures (fan-in)."""

    def process(self, job: flowpro.Job) -> dict[str, Any]:
        days = sorted(Workflow.all_recorded(job).values(), key=lambda d: d["day"])
        return {
            "days": [d["day"] for d in days],
            "lines": sum(d["lines"] for d in days),
            "revenue": sum(d["revenue"] for d in days),
        }


class Load(flowpro.Worker, queue="etl", recorded=True):
    """Write the totals to the (pretend) warehouse."""

    def process(self, job: flowpro.Job) -> dict[str, Any]:
        totals = Workflow.get_recorded(job, "aggregate")
        return {"table": "daily_revenue", "rows_written": len(totals["days"]), **totals}


class Report(flowpro.Worker, queue="etl"):
    """Announce the load."""

    def process(self, job: flowpro.Job) -> None:
        loaded = Workflow.get_recorded(job, "load")
        print(f"loaded {loaded['rows_written']} day(s), revenue {loaded['revenue']}")


@flowpro.dag(schedule="0 2 * * *")
def nightly_etl(tick: datetime | None = None) -> Workflow:
    """Extract, clean, aggregate and load the last three days."""
    end = (tick or datetime.now(UTC)).date()
    days = [(end - timedelta(days=n)).isoformat() for n in range(DAYS, 0, -1)]
    wf = Workflow(name="nightly_etl")
    for i, day in enumerate(days):
        wf.add(f"extract:{day}", Extract.new({"day": day}))
        wf.add(f"clean:{day}", Clean.new({"day": day, "flaky": i == 1}), deps=[f"extract:{day}"])
    wf.add("aggregate", Aggregate.new({}), deps=[f"clean:{day}" for day in days])
    wf.add("load", Load.new({}), deps=["aggregate"])
    return wf.add("report", Report.new({}), deps=["load"])


def main() -> None:
    """Trigger the DAG, run a node until the workflow is done, then show it."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    fp = flowpro.FlowPro()  # $FLOWPRO_DATABASE_URL, else sqlite:///flowpro.db
    fp.migrate()  # SQLite does this by itself; PostgreSQL needs it once
    wf = nightly_etl()
    fp.insert(wf)
    console.print(f"inserted workflow [bold]{wf.workflow_id}[/] ({len(wf.steps)} steps)")
    started = time.monotonic()
    while fp.workflow_status(wf.workflow_id).state == "running":
        if time.monotonic() - started > 60:
            raise SystemExit("the workflow did not finish within 60 s")
        # Returns when nothing is runnable right now; a retry a second away needs another round.
        fp.run(queues={"etl": 5}, until_idle=True)
        time.sleep(0.2)

    status = fp.workflow_status(wf.workflow_id)
    table = Table(title=f"nightly_etl: {status.state} in {status.duration}")
    for column in ("step", "state", "attempts", "recorded output"):
        table.add_column(column)
    _workflows, steps, _edges = fp.storage.workflow_rows(wf.workflow_id)
    for job in steps:
        output = _brief(_fetch(job)) if job.recorded is not None else ""
        table.add_row(job.step or str(job.id), str(job.state), str(job.attempt), output)
    console.print(table)
    console.print(fp.workflow_graph(wf.workflow_id, format="mermaid"))
    fp.close()


def _fetch(job: flowpro.Job) -> Any:
    from flowpro.worker import resolve_worker

    return resolve_worker(job.worker).fetch_recorded(job)


def _brief(value: Any, width: int = 60) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


if __name__ == "__main__":
    # Run as a script, this file is `__main__`; import it under its module name so the jobs
    # carry the same worker names (`etl.Extract`, ...) as under `flowpro run examples/dags`.
    import etl  # type: ignore[import-not-found]

    etl.main()
