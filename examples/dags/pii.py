"""A pipeline over encrypted personal data: args and recorded outputs are unreadable at rest.

    export FLOWPRO_PII_KEY=$(flowpro keygen)      # keep it in your secret store
    flowpro dags trigger customer_export examples/dags
    flowpro run examples/dags --until-idle

Every worker is ``encrypted=dict(key="pii:pii_keys")``: args are sealed with AES-256-GCM
before they leave the process, bound to the job's id, and opened only when the job runs; the
recorded outputs (which carry personal data between steps) are sealed too. Meta stays
plaintext, so only a customer id goes there. Without ``$FLOWPRO_PII_KEY`` the example makes a
throwaway key in ``.flowpro-example-key`` (never do that for real data).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, field_validator

import flowpro
from flowpro import Workflow

KEY_FILE = Path(".flowpro-example-key")


def pii_keys() -> list[str]:
    """Return the keys: $FLOWPRO_PII_KEY first (it encrypts), then older ones to decrypt."""
    keys = [k for k in os.environ.get("FLOWPRO_PII_KEY", "").split(",") if k]
    if not keys:
        if not KEY_FILE.exists():
            KEY_FILE.write_text(base64.b64encode(os.urandom(32)).decode())
            KEY_FILE.chmod(0o600)
        keys = [KEY_FILE.read_text().strip()]
    return keys


SEALED = dict(key="pii:pii_keys")


class Customer(BaseModel):
    customer_id: int
    name: str
    email: str
    country: str

    @field_validator("email")
    @classmethod
    def _looks_like_email(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError("not an email address")
        return value


class Load(flowpro.Worker, queue="pii", structured=Customer, recorded=True, encrypted=SEALED):
    """Receive one customer's record (structured and validated at insert)."""

    def process(self, job: flowpro.Job) -> dict[str, Any]:
        return job.args.model_dump()


class Pseudonymise(flowpro.Worker, queue="pii", recorded=True, encrypted=SEALED):
    """Replace direct identifiers with a keyed hash; keep the country."""

    def process(self, job: flowpro.Job) -> dict[str, Any]:
        record = Workflow.get_recorded(job, f"load:{job.meta['customer_id']}")
        secret = pii_keys()[0].encode()
        token = hashlib.blake2b(record["email"].encode(), key=secret[:64], digest_size=12)
        return {"token": token.hexdigest(), "country": record["country"]}


class Export(flowpro.Worker, queue="pii", recorded=True, encrypted=SEALED):
    """Write the pseudonymised row to the (pretend) analytics store."""

    def process(self, job: flowpro.Job) -> dict[str, Any]:
        row = Workflow.get_recorded(job, f"pseudonymise:{job.meta['customer_id']}")
        return {"exported": True, "country": row["country"]}


CUSTOMERS = [
    {"customer_id": 1, "name": "Ada Lovelace", "email": "ada@example.org", "country": "GB"},
    {"customer_id": 2, "name": "Grace Hopper", "email": "grace@example.org", "country": "US"},
]


@flowpro.dag(schedule="30 1 * * *")
def customer_export() -> Workflow:
    """Nightly export of pseudonymised customers (encrypted end to end)."""
    wf = Workflow(name="customer_export")
    for customer in CUSTOMERS:
        cid = customer["customer_id"]
        meta = {"customer_id": cid}  # plaintext: ids only, never personal data
        wf.add(f"load:{cid}", Load.new(customer, meta=meta))
        wf.add(f"pseudonymise:{cid}", Pseudonymise.new({}, meta=meta), deps=[f"load:{cid}"])
        wf.add(f"export:{cid}", Export.new({}, meta=meta), deps=[f"pseudonymise:{cid}"])
    return wf
