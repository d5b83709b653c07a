"""Forget the workers a test defined inside a function, so they cannot leak into later tests.

Workers defined at module level stay registered (their module stays imported), even when the
module was first imported during a test.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# `flowpro.worker` the attribute is the decorator; the module holds the registry.
_worker_module = importlib.import_module("flowpro.worker")


def _module_level(cls: Any) -> bool:
    module = sys.modules.get(getattr(cls, "__module__", ""))
    return module is not None and getattr(module, cls.__qualname__, None) is cls


@contextmanager
def isolated_registry() -> Iterator[None]:
    registry: dict[str, Any] = _worker_module._REGISTRY
    saved = dict(registry)
    try:
        yield
    finally:
        for name, cls in list(registry.items()):
            if saved.get(name) is cls:
                continue
            if name in saved:
                registry[name] = saved[name]  # a test re-used a name: put the old class back
            elif not _module_level(cls):
                del registry[name]
