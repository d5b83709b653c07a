"""Every Python example of the Pro worker pages runs as written (on the SQLite default)."""

from __future__ import annotations

import pytest

from tests.docs.test_examples import run_page

PRO_PAGES = ["docs/structured.md", "docs/recorded.md", "docs/encrypted.md", "docs/security.md"]


@pytest.mark.parametrize("page", PRO_PAGES)
def test_every_python_example_of_the_pro_page_runs(page, tmp_path):
    assert run_page(page, cwd=tmp_path, url=None) >= 1
