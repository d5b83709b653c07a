"""Notify a team, then summarise: a workflow that fans out into a batch and ends in its callback.

    python examples/dags/notify_batch.py                 # insert it and run it here, on SQLite
    flowpro dags show notify_team examples/dags --format mermaid
    flowpro dags trigger notify_team examples/dags       # or insert it for `flowpro run` nodes
    flowpro run examples/dags --until-idle

``audience`` records who is on the team; ``fan_out`` reads that list and inserts one ``Notify``
job per person as a Batch whose callback is ``NotifySummary``. Each ``Notify`` records what it
delivered: one address bounces (the job is discarded), one mail server is busy on the first
attempt (the job is retried). Once every member has finished, ``batch_exhausted`` runs once,
reads all the members' recorded results with ``Batch.all_recorded(job)`` and records the
summary, which the script prints.

Run as a script, it uses ``$FLOWPRO_DATABASE_URL`` when set, else ``sqlite:///flowpro.db`` in
the current folder, and runs everything in this process with ``fp.drain()``.
"""

from __future__ import annotations

import json
from typing import Any

import flowpro
from flowpro import Batch, Workflow

TEAMS = {
    "platform": [
        {"name": "Ada", "email": "ada@example.com", "channel": "email"},
        {"name": "Grace", "email": "grace@example.com", "channel": "sms"},
        {"name": "Edsger", "email": "edsger@bounce.example", "channel": "email"},
        {"name": "Barbara", "email": "barbara@busy.example", "channel": "email"},
        {"name": "Alan", "email": "alan@example.com", "channel": "push"},
    ]
}


class Audience(flowpro.Worker, queue="notify", recorded=True):
    """Look up who should hear about the release."""

    def process(self, job: flowpro.Job) -> list[dict[str, str]]:
        return TEAMS[job.args["team"]]


class FanOut(flowpro.Worker, queue="notify", recorded=True):
    """Insert one Notify job per person, as a batch that reports back to NotifySummary."""

    def process(self, job: flowpro.Job) -> dict[str, Any]:
        people = Workflow.get_recorded(job, "audience")
        batch = Batch(
            [Notify.new({**person, "subject": job.args["subject"]}) for person in people],
            callback=NotifySummary,
            name=f"notify-{job.args['team']}",
            callback_args={"team": job.args["team"], "subject": job.args["subject"]},
        )
        batch.insert()  # inside a job: inserted through the node running it
        return {"batch_id": batch.batch_id, "members": len(people)}


class Notify(flowpro.Worker, queue="notify", recorded=True, max_attempts=3):
    """Deliver one message; the recorded value says what was delivered where."""

    def process(self, job: flowpro.Job) -> Any:
        email = job.args["email"]
        if email.endswith("@bounce.example"):
            return flowpro.Discard(f"{email} does not exist")
        if email.endswith("@busy.example") and job.attempt == 1:
            raise ConnectionError("mail server busy, try again")
        return {"to": job.args["name"], "channel": job.args["channel"], "attempt": job.attempt}

    def backoff(self, job: flowpro.Job) -> float:
        return 0  # a demo: retry at once


class NotifySummary(flowpro.Worker, queue="notify", recorded=True):
    """The batch callback: summarise the members' recorded results."""

    def batch_exhausted(self, job: flowpro.Job) -> dict[str, Any]:
        delivered = Batch.all_recorded(job)  # {member job id: recorded value}
        members = Batch.all_jobs(job)
        channels: dict[str, int] = {}
        for value in delivered.values():
            channels[value["channel"]] = channels.get(value["channel"], 0) + 1
        return {
            "team": job.args["team"],
            "subject": job.args["subject"],
            "delivered": len(delivered),
            "failed": sorted(m.args["email"] for m in members if m.state != "completed"),
            "retried": sorted(v["to"] for v in delivered.values() if v["attempt"] > 1),
            "channels": dict(sorted(channels.items())),
        }


@flowpro.dag(schedule="0 9 * * 1")
def notify_team() -> Workflow:
    """Tell the platform team about the weekly release, then summarise the deliveries."""
    wf = Workflow(name="notify-team")
    wf.add("audience", Audience.new({"team": "platform"}))
    wf.add(
        "fan_out",
        FanOut.new({"team": "platform", "subject": "Release 2.4 is out"}),
        deps=["audience"],
    )
    return wf


def summary_of(fp: flowpro.FlowPro, batch_id: str) -> Any:
    """Return the summary recorded by the batch's ``batch_exhausted`` callback."""
    for job in fp.list_jobs(worker=NotifySummary, limit=1_000):
        if job.meta.get("batch_id") == batch_id and job.meta.get("callback") == "exhausted":
            return NotifySummary.fetch_recorded(job)
    raise LookupError(f"batch {batch_id} has no summary yet")


def main() -> None:
    fp = flowpro.FlowPro()  # $FLOWPRO_DATABASE_URL, else sqlite:///flowpro.db
    fp.migrate()
    try:
        wf = notify_team()
        fp.insert(wf)
        outcomes = fp.drain()  # steps, members, retries and the callback, in this thread
        fan_out = next(j for j in fp.list_jobs(worker=FanOut) if j.workflow_id == wf.workflow_id)
        batch_id = FanOut.fetch_recorded(fan_out)["batch_id"]
        print(f"ran: {', '.join(f'{n} {state}' for state, n in sorted(outcomes.items()))}")
        print(json.dumps(summary_of(fp, batch_id), indent=2))
    finally:
        fp.close()


if __name__ == "__main__":
    main()
