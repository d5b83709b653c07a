"""Raw-database helpers for the Pro worker tests: read and rewrite rows behind flowpro's back."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
import zstandard

import flowpro


def is_pg(fp: flowpro.FlowPro) -> bool:
    return fp.storage.dialect == "postgresql"


def engine(fp: flowpro.FlowPro) -> sa.Engine:
    return fp.storage.engine  # type: ignore[attr-defined,no-any-return]


def raw_column(fp: flowpro.FlowPro, job_id: int, column: str) -> Any:
    """The stored value of one column, as the driver returns it (JSON columns parsed)."""
    with engine(fp).connect() as c:
        value = c.execute(
            sa.text(f"SELECT {column} FROM flowpro_jobs WHERE id = :id"), {"id": job_id}
        ).scalar_one()
    if column in ("args", "meta", "errors", "tags") and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def raw_columns(fp: flowpro.FlowPro, column: str) -> dict[int, Any]:
    """One column of every job, by id (JSON columns parsed)."""
    with engine(fp).connect() as c:
        rows = c.execute(sa.text(f"SELECT id, {column} FROM flowpro_jobs")).all()
    return {row[0]: json.loads(row[1]) if isinstance(row[1], str) else row[1] for row in rows}


def set_json(fp: flowpro.FlowPro, column: str, values: dict[int, Any]) -> None:
    """Overwrite a JSON column of several jobs (id -> new value) in one transaction."""
    cast = f"CAST(:value AS {'jsonb' if is_pg(fp) else 'text'})"
    sql = sa.text(f"UPDATE flowpro_jobs SET {column} = {cast} WHERE id = :id")
    rows = [{"id": job_id, "value": json.dumps(value)} for job_id, value in values.items()]
    with engine(fp).begin() as c:
        c.execute(sql, rows)


def set_column(fp: flowpro.FlowPro, job_id: int, column: str, value: Any) -> None:
    """Overwrite one plain (non-JSON) column of a job."""
    with engine(fp).begin() as c:
        c.execute(
            sa.text(f"UPDATE flowpro_jobs SET {column} = :value WHERE id = :id"),
            {"id": job_id, "value": value},
        )


def count_rows(fp: flowpro.FlowPro) -> int:
    with engine(fp).connect() as c:
        return int(c.execute(sa.text("SELECT count(*) FROM flowpro_jobs")).scalar_one())


def dump_tables(fp: flowpro.FlowPro) -> list[tuple[str, str, bytes]]:
    """Every value of every column of every flowpro_ table, as (table, column, bytes).

    Text and JSON become UTF-8 (JSON both as stored and with escapes undone), binary values
    are kept raw and, when they hold a recorded zstd frame, also decompressed, so that an
    unencrypted value is found wherever it sits.
    """
    out: list[tuple[str, str, bytes]] = []
    eng = engine(fp)
    tables = [t for t in sa.inspect(eng).get_table_names() if t.startswith("flowpro_")]
    assert "flowpro_jobs" in tables
    with eng.connect() as c:
        for table in tables:
            result = c.execute(sa.text(f"SELECT * FROM {table}"))
            columns = list(result.keys())
            for row in result:
                for column, value in zip(columns, row, strict=True):
                    for blob in _as_bytes(value):
                        out.append((table, column, blob))
    return out


def occurrences(dump: list[tuple[str, str, bytes]], secret: str) -> list[tuple[str, str]]:
    """Where ``secret`` occurs in a table dump, as (table, column) pairs."""
    needle = secret.encode()
    return [(table, column) for table, column, blob in dump if needle in blob]


def _as_bytes(value: Any) -> list[bytes]:
    if value is None:
        return []
    if isinstance(value, memoryview | bytes | bytearray):
        raw = bytes(value)
        blobs = [raw]
        if raw[:1] == b"\x01" and raw[1:5] == b"\x28\xb5\x2f\xfd":
            blobs.append(zstandard.ZstdDecompressor().decompress(raw[1:]))
        return blobs
    if isinstance(value, dict | list):
        return [
            json.dumps(value).encode(),
            json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace"),
        ]
    text = str(value)
    blobs = [text.encode("utf-8", "backslashreplace")]
    if text[:1] in "[{":
        try:
            parsed = json.loads(text)
        except ValueError:
            return blobs
        blobs.append(json.dumps(parsed, ensure_ascii=False).encode("utf-8", "backslashreplace"))
    return blobs
