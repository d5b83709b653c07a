"""The alembic migrations build exactly schema.py on both dialects, and ship inside the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

import flowpro
from flowpro.storage import migrate, open_storage
from flowpro.storage.schema import VERSION_TABLE, metadata

ROOT = Path(__file__).resolve().parents[2]
CORE_TABLES = {"flowpro_jobs", "flowpro_nodes", "flowpro_leader", "flowpro_cron_ticks"}


@pytest.fixture
def engine(db_url):
    """The engine of an empty database of each kind."""
    storage = open_storage(db_url)
    yield storage.engine
    storage.close()


def diffs(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_name": lambda name, type_, parent: (
                    type_ != "table" or name.startswith("flowpro_")
                ),
            },
        )
        found = compare_metadata(context, metadata)
    return [d for d in found if not _is_version_table(d)]


def _is_version_table(diff) -> bool:
    table = diff[1] if isinstance(diff, tuple) and len(diff) > 1 else None
    return getattr(table, "name", None) == VERSION_TABLE


def tables(engine: sa.Engine) -> set[str]:
    return {t for t in sa.inspect(engine).get_table_names() if t.startswith("flowpro_")}


def indexes(engine: sa.Engine) -> set[str]:
    return {i["name"] for i in sa.inspect(engine).get_indexes("flowpro_jobs")}


def test_upgrade_head_builds_exactly_the_schema_of_schema_py(engine):
    migrate.upgrade(engine)

    assert diffs(engine) == []
    assert tables(engine) == set(metadata.tables) | {VERSION_TABLE}
    assert set(metadata.tables) >= CORE_TABLES
    assert {
        "flowpro_jobs_claim_idx",
        "flowpro_jobs_stage_idx",
        "flowpro_jobs_executing_idx",
        "flowpro_jobs_state_queue_idx",
    } <= indexes(engine)


def test_an_empty_database_differs_from_schema_py(engine):
    # The comparison above can fail: without the migrations every table is missing.
    assert {d[0] for d in diffs(engine)} == {"add_table", "add_index"}


def test_downgrade_to_base_removes_every_table_and_upgrade_rebuilds_them(engine):
    migrate.upgrade(engine)

    migrate.downgrade(engine, "base")

    assert tables(engine) <= {VERSION_TABLE}
    assert migrate.current_revision(engine) is None
    assert migrate.is_current(engine) is False

    migrate.upgrade(engine)

    assert diffs(engine) == []
    assert migrate.is_current(engine) is True


def state_index(engine: sa.Engine) -> str:
    """Return the definition of the state index as the database holds it."""
    if engine.dialect.name == "sqlite":
        sql = "SELECT sql FROM sqlite_master WHERE name = 'flowpro_jobs_state_queue_idx'"
    else:
        sql = (
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'flowpro_jobs_state_queue_idx' "
            "AND schemaname = current_schema()"
        )
    with engine.connect() as conn:
        return str(conn.execute(sa.text(sql)).scalar_one())


def test_revision_0003_leaves_moving_states_out_of_the_state_index_and_undoes_it(engine):
    # Alembic's comparison does not look at an index's WHERE clause: read it back.
    migrate.upgrade(engine)
    assert "available" in state_index(engine) and "executing" in state_index(engine)

    migrate.downgrade(engine, "0002")
    assert "WHERE" not in state_index(engine).upper()

    migrate.upgrade(engine)
    assert "available" in state_index(engine)


def index_columns(engine: sa.Engine, name: str) -> list[str]:
    found = [i for i in sa.inspect(engine).get_indexes("flowpro_jobs") if i["name"] == name]
    assert len(found) == 1, f"no index {name}"
    return list(found[0]["column_names"])


def test_revision_0004_puts_the_claim_order_in_the_chunk_index_and_undoes_it(engine):
    ordered = ["queue", "worker", "chunk_key", "priority", "scheduled_at", "id"]
    migrate.upgrade(engine)
    assert index_columns(engine, "flowpro_jobs_chunk_idx") == ordered

    migrate.downgrade(engine, "0003")
    assert index_columns(engine, "flowpro_jobs_chunk_idx") == ["queue", "worker", "chunk_key"]

    migrate.upgrade(engine)
    assert index_columns(engine, "flowpro_jobs_chunk_idx") == ordered
    assert diffs(engine) == []


def test_revision_0005_moves_step_names_to_their_own_table_and_undoes_it(engine):
    migrate.upgrade(engine, "0004")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO flowpro_jobs (id, state, queue, worker, args, meta, tags, errors, "
                "max_attempts, inserted_at, scheduled_at, workflow_id, step) VALUES "
                "(7, 'suspended', 'q', 'w', '{}', '{}', '[]', '[]', 20, :t, :t, 'wf1', 'load'), "
                "(8, 'available', 'q', 'w', '{}', '{}', '[]', '[]', 20, :t, :t, NULL, NULL)"
            ),
            {"t": "2026-01-01 00:00:00.000000"},
        )

    migrate.upgrade(engine)
    with engine.connect() as conn:
        steps = conn.execute(sa.text("SELECT workflow_id, step, job_id FROM flowpro_steps"))
        assert [tuple(r) for r in steps] == [("wf1", "load", 7)]
    assert "flowpro_jobs_workflow_idx" not in indexes(engine)
    assert diffs(engine) == []

    migrate.downgrade(engine, "0004")
    assert "flowpro_jobs_workflow_idx" in indexes(engine)
    assert "flowpro_steps" not in tables(engine)


def test_migrating_twice_changes_nothing(fp):
    job = fp.insert(flowpro.Worker.new({"kept": True}))

    fp.migrate()
    fp.migrate()

    assert fp.get_job(job.id).args == {"kept": True}
    assert fp.storage.schema_is_current() is True


def test_the_revision_is_none_before_and_head_after_migrating(engine):
    assert migrate.current_revision(engine) is None

    migrate.upgrade(engine)

    assert migrate.current_revision(engine) == migrate.HEAD_REVISION


def test_head_revision_in_the_code_is_alembics_head():
    config = Config()
    config.set_main_option("script_location", str(migrate.migrations_dir()))

    heads = ScriptDirectory.from_config(config).get_heads()

    assert heads == [migrate.HEAD_REVISION]


def test_the_migrations_found_are_the_ones_in_the_source_tree():
    assert migrate.migrations_dir().resolve() == (ROOT / "migrations").resolve()


def test_the_embedded_sqlite_default_creates_its_tables_on_first_use(tmp_path):
    app = flowpro.FlowPro(f"sqlite:///{tmp_path}/fresh.db")
    try:
        job = app.insert(flowpro.Worker.new({}))

        assert app.get_job(job.id) is not None
        assert app.storage.schema_is_current() is True
    finally:
        app.close()


def test_the_wheel_ships_the_migrations_and_an_installed_copy_migrates(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(dist)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = dist.glob("flowpro-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    assert "flowpro/_migrations/env.py" in names
    versions = {n for n in names if n.startswith("flowpro/_migrations/versions/")}
    expected = {
        f"flowpro/_migrations/versions/{p.name}"
        for p in (ROOT / "migrations/versions").glob("*.py")
    }
    assert expected and expected <= versions

    # Unpacked away from the source tree, the package finds its own migrations.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    script = (
        "import flowpro, flowpro.storage.migrate as m\n"
        f"assert flowpro.__file__.startswith({str(site)!r}), flowpro.__file__\n"
        f"assert str(m.migrations_dir()).startswith({str(site)!r}), m.migrations_dir()\n"
        "app = flowpro.FlowPro('sqlite:///installed.db')\n"
        "app.migrate()\n"
        "assert app.storage.schema_is_current()\n"
        "print('migrated')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("FLOWPRO_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "migrated"
    shutil.rmtree(site)
