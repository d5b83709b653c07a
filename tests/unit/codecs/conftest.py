"""Codec tests are pure: no database fixtures here."""

from __future__ import annotations

import contextlib
import warnings

# When a hypothesis test fails, its pytest plugin imports libcst to suggest a patch, and libcst
# triggers a DeprecationWarning (mypy_extensions.TypedDict) that `filterwarnings = error` turns
# into an INTERNALERROR hiding the failure. Import it once here with that warning silenced.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    with contextlib.suppress(ImportError):  # libcst is optional
        import hypothesis.extra._patching  # noqa: F401
