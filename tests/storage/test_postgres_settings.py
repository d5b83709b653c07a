"""PostgreSQL only: the planner setting every flowpro connection carries."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import flowpro

pytestmark = pytest.mark.postgres


def test_pooled_and_producer_connections_plan_with_a_random_page_cost_of_1_1(pg_schema_url):
    app = flowpro.FlowPro(pg_schema_url)
    try:
        with app.storage.engine.connect() as conn:
            pooled = conn.execute(sa.text("SHOW random_page_cost")).scalar_one()
        raw = app.storage._hot_connection()  # a producer's own connection
        own = raw.execute("SHOW random_page_cost").fetchone()[0]
        raw.rollback()
        plain = sa.create_engine(app.storage.engine.url)
        with plain.connect() as conn:
            default = conn.execute(sa.text("SHOW random_page_cost")).scalar_one()
        plain.dispose()
    finally:
        app.close()

    assert (pooled, own) == ("1.1", "1.1")
    assert default != "1.1"  # the server's own setting: only flowpro's sessions change
