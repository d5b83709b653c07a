"""Loading DAG and worker code from files, folders and module names (no database)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

from flowpro import _loader
from flowpro.errors import ConfigError

WORKER = """
import flowpro


class {name}(flowpro.Worker, queue="{queue}"):
    def process(self, job):
        return None
"""


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_top_level_file_is_imported_under_its_stem_with_its_folder_on_sys_path(
    tmp_path: Path,
) -> None:
    file = write(tmp_path / "dags" / "etl_jobs.py", WORKER.format(name="Extract", queue="etl"))

    module = _loader.load_file(file)

    assert module.__name__ == "etl_jobs"
    assert module.Extract.__flowpro_name__ == "etl_jobs.Extract"
    assert sys.path[0] == str((tmp_path / "dags").resolve())
    assert importlib.import_module("etl_jobs") is module  # application code gets the same


def test_a_file_inside_a_package_is_imported_under_its_dotted_name(tmp_path: Path) -> None:
    write(tmp_path / "proj" / "myapp" / "__init__.py")
    write(tmp_path / "proj" / "myapp" / "jobs" / "__init__.py")
    file = write(
        tmp_path / "proj" / "myapp" / "jobs" / "billing.py",
        WORKER.format(name="Charge", queue="billing"),
    )

    module = _loader.load_file(file)

    assert module.__name__ == "myapp.jobs.billing"
    assert module.Charge.__flowpro_name__ == "myapp.jobs.billing.Charge"
    assert str((tmp_path / "proj").resolve()) in sys.path
    assert importlib.import_module("myapp.jobs.billing") is module


def test_a_folder_already_on_sys_path_is_not_added_again(tmp_path: Path) -> None:
    file = write(tmp_path / "once.py")
    sys.path.insert(0, str(tmp_path))
    before = list(sys.path)

    _loader.load_file(file)

    assert sys.path == before


def test_a_folder_is_searched_recursively_skipping_underscored_files_and_hidden_folders(
    tmp_path: Path,
) -> None:
    root = tmp_path / "dags"
    wanted = [
        write(root / "a_first.py"),
        write(root / "nested" / "b_second.py"),
    ]
    write(root / "_private.py", "raise RuntimeError('must not be imported')")
    write(root / "__pycache__" / "cached.py", "raise RuntimeError('must not be imported')")
    write(root / ".venv" / "lib.py", "raise RuntimeError('must not be imported')")
    write(root / "_internal" / "helper.py", "raise RuntimeError('must not be imported')")
    write(root / "notes.txt", "not python")

    files = _loader.python_files([root])
    modules = _loader.load([root])

    assert files == wanted
    assert [m.__name__ for m in modules] == ["a_first", "b_second"]


def test_a_file_named_explicitly_is_loaded_even_with_an_underscore(tmp_path: Path) -> None:
    file = write(tmp_path / "_special.py", "VALUE = 7\n")

    (module,) = _loader.load([file])

    assert module.VALUE == 7


def test_a_file_that_fails_to_import_names_the_file_the_error_and_the_line(
    tmp_path: Path,
) -> None:
    file = write(tmp_path / "broken_dag.py", "import os\n\nVALUE = undefined_name\n")

    with pytest.raises(ConfigError) as caught:
        _loader.load([file])

    message = str(caught.value)
    assert message.startswith(f"cannot import {file}: NameError:")
    assert "undefined_name" in message
    assert "line 3" in message
    assert "broken_dag" not in sys.modules


def test_a_syntax_error_names_the_file(tmp_path: Path) -> None:
    file = write(tmp_path / "typo_dag.py", "def oops(:\n")

    with pytest.raises(ConfigError, match=r"cannot import .*typo_dag\.py: SyntaxError"):
        _loader.load_file(file)


def test_a_file_calling_sys_exit_is_reported_not_obeyed(tmp_path: Path) -> None:
    file = write(tmp_path / "exits_dag.py", "import sys\nsys.exit(3)\n")

    with pytest.raises(ConfigError, match="SystemExit: 3"):
        _loader.load_file(file)


def test_a_file_whose_name_is_taken_by_another_module_is_refused(tmp_path: Path) -> None:
    file = write(tmp_path / "json.py", "VALUE = 1\n")

    with pytest.raises(ConfigError, match="the module name 'json' is taken by"):
        _loader.load_file(file)


def test_a_file_whose_name_is_not_a_module_name_is_refused(tmp_path: Path) -> None:
    file = write(tmp_path / "nightly-etl.py", "VALUE = 1\n")

    with pytest.raises(ConfigError, match="'nightly-etl' is not a valid module name"):
        _loader.load_file(file)


def test_missing_paths_and_non_python_files_are_refused(tmp_path: Path) -> None:
    text = write(tmp_path / "readme.txt", "hello")

    with pytest.raises(ConfigError, match="no such file or folder"):
        _loader.load([tmp_path / "missing"])
    with pytest.raises(ConfigError, match=r"not a Python file"):
        _loader.load([text])


def test_modules_are_imported_by_dotted_name_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "shop" / "__init__.py")
    write(tmp_path / "shop" / "tasks.py", WORKER.format(name="Ship", queue="shipping"))
    monkeypatch.chdir(tmp_path)

    (module,) = _loader.load(modules=["shop.tasks"])

    assert module.Ship.__flowpro_name__ == "shop.tasks.Ship"


def test_a_missing_module_is_a_config_error_naming_it() -> None:
    with pytest.raises(
        ConfigError, match=r"cannot import module no_such_pkg\.jobs: ModuleNotFound"
    ):
        _loader.load_module("no_such_pkg.jobs")


def test_default_paths_are_flowpro_dags_else_the_dags_folder_else_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWPRO_DAGS", raising=False)

    nothing = _loader.default_paths()
    (tmp_path / "dags").mkdir()
    folder = _loader.default_paths()
    monkeypatch.setenv("FLOWPRO_DAGS", f"/a{os.pathsep}/b")
    env = _loader.default_paths()

    assert nothing == []
    assert folder == ["dags"]
    assert env == ["/a", "/b"]
