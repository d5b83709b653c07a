"""Fan-out / fan-in: one report per region computed in parallel, then merged.

    flowpro dags show regional_report examples/dags --format mermaid
    flowpro dags trigger regional_report examples/dags
    flowpro run examples/dags --until-idle

``plan`` decides which regions to report on and records the list; one ``RegionTotals`` step
per region runs in parallel (each records its totals); ``Merge`` waits for all of them and
reads every region's output with ``Workflow.all_recorded(job)``; ``Publish`` runs last.
"""

from __future__ import annotations

import hashlib
from typing import Any

import flowpro
from flowpro import Workflow

REGIONS = ["emea", "amer", "apac", "latam", "anz"]


def _figure(*parts: str) -> int:
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return int(digest[:8], 16) % 100_000


class Plan(flowpro.Worker, queue="reports", recorded=True):
    """Choose the regions and the reporting month."""

    def process(self, job: flowpro.Job) -> dict[str, Any]:
        return {"month": job.args["month"], "regions": REGIONS}


class RegionTotals(flowpro.Worker, queue="reports", recorded=True, max_attempts=3):
    """Sum one region's sales for the month (deterministic demo figures)."""

    def process(self, job: flowpro.Job) -> dict[str, Any]:
        plan = Workflow.get_recorded(job, "plan")
        region = job.args["region"]
        return {
            "region": region,
            "orders": _figure(plan["month"], region, "orders") // 10,
            "revenue": _figure(plan["month"], region, "revenue"),
        }


class Merge(flowpro.Worker, queue="reports", recorded=True):
    """Combine every region's totals into one report."""

    def process(self, job: flowpro.Job) -> dict[str, Any]:
        totals = [v for k, v in Workflow.all_recorded(job).items() if k.startswith("region:")]
        totals.sort(key=lambda t: -t["revenue"])
        return {
            "regions": len(totals),
            "revenue": sum(t["revenue"] for t in totals),
            "orders": sum(t["orders"] for t in totals),
            "best": totals[0]["region"] if totals else None,
        }


class Publish(flowpro.Worker, queue="reports"):
    """Pretend to publish the merged report."""

    def process(self, job: flowpro.Job) -> None:
        report = Workflow.get_recorded(job, "merge")
        print(f"published: {report}")


@flowpro.dag(schedule="0 6 1 * *")
def regional_report(tick: Any = None) -> Workflow:
    """Monthly revenue per region, fanned out and merged."""
    month = tick.strftime("%Y-%m") if tick is not None else "2026-11"
    wf = Workflow(name="regional_report").add("plan", Plan.new({"month": month}))
    for region in REGIONS:
        wf.add(f"region:{region}", RegionTotals.new({"region": region}), deps=["plan"])
    wf.add("merge", Merge.new({}), deps=[f"region:{r}" for r in REGIONS])
    return wf.add("publish", Publish.new({}), deps=["merge"])
