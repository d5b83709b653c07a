"""The public names: `flowpro.__all__` is sorted and everything in it is importable."""

from __future__ import annotations

import importlib

import flowpro


def test_all_is_sorted_and_has_no_duplicates():
    assert flowpro.__all__ == sorted(flowpro.__all__)
    assert len(set(flowpro.__all__)) == len(flowpro.__all__)


def test_every_public_name_is_importable_from_flowpro():
    module = importlib.import_module("flowpro")

    missing = [name for name in flowpro.__all__ if not hasattr(module, name)]

    assert missing == []
    for name in flowpro.__all__:
        exec(f"from flowpro import {name}", {})  # noqa: S102 - the import statement itself


def test_the_contract_names_of_the_core_engine_are_public():
    core = {
        "ArgsError",
        "Cancel",
        "ConfigError",
        "Discard",
        "FlowPro",
        "FlowproError",
        "Job",
        "JobState",
        "RecordMissing",
        "Snooze",
        "StorageError",
        "Worker",
        "worker",
    }

    assert core <= set(flowpro.__all__)


def test_every_public_error_derives_from_flowpro_error():
    errors = [getattr(flowpro, n) for n in flowpro.__all__ if n.endswith(("Error", "Missing"))]

    assert errors
    assert all(issubclass(e, flowpro.FlowproError) for e in errors)


def test_the_package_has_a_version():
    assert isinstance(flowpro.__version__, str) and flowpro.__version__.count(".") >= 1
