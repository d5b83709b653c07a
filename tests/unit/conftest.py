"""Tests here define workers (some with cron) inside test functions: forget them afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.registry import isolated_registry


@pytest.fixture(autouse=True)
def _isolated_registry() -> Iterator[None]:
    with isolated_registry():
        yield
