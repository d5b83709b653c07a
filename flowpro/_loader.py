"""Import DAG and worker code from files, folders and module names, as `flowpro run` does."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from flowpro.errors import ConfigError

DEFAULT_FOLDER = "dags"


def default_paths() -> list[str]:
    """Return ``$FLOWPRO_DAGS`` (``os.pathsep``-separated), else ``./dags`` if it exists."""
    env = os.environ.get("FLOWPRO_DAGS", "")
    if env.strip():
        return [p for p in env.split(os.pathsep) if p.strip()]
    return [DEFAULT_FOLDER] if Path(DEFAULT_FOLDER).is_dir() else []


def python_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Return the ``*.py`` files named by ``paths``, folders searched recursively.

    Files whose name starts with ``_`` are skipped, and so are folders starting with ``_`` or
    ``.`` (``__pycache__``, ``.venv``); a file named explicitly is always kept.

    Raises:
        ConfigError: a path does not exist or is not a Python file.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for found in sorted(path.rglob("*.py")):
                rel = found.relative_to(path).parts
                if found.name.startswith("_") or any(p[:1] in "_." for p in rel[:-1]):
                    continue
                files.append(found)
        elif path.is_file():
            if path.suffix != ".py":
                raise ConfigError(f"cannot load {raw}: not a Python file (*.py) or a folder")
            files.append(path)
        else:
            raise ConfigError(f"cannot load {raw}: no such file or folder")
    return files


def module_name(path: Path) -> tuple[str, Path]:
    """Return the module name of a file and the folder that must be on ``sys.path`` for it.

    A file in a regular package (folders with ``__init__.py``) is ``package.sub.stem``, found
    from the package's parent folder; any other file is top-level: its stem, from its folder.
    """
    path = path.resolve()
    parts = [path.stem] if path.name != "__init__.py" else []
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    name = ".".join(parts)
    if not parts or not all(p.isidentifier() for p in parts):
        raise ConfigError(
            f"cannot load {path}: {name or path.name!r} is not a valid module name; "
            "rename the file (letters, digits and _)"
        )
    return name, folder


def load_file(path: str | os.PathLike[str]) -> ModuleType:
    """Import one file under the module name it has on ``sys.path`` (see `module_name`).

    Its root folder is put first on ``sys.path`` when it is not there already, so that
    application code importing the same module gets the same worker names.

    Raises:
        ConfigError: the file fails to import, or another module already has its name.
    """
    file = Path(path).resolve()
    name, root = module_name(file)
    if not any(_same_dir(entry, root) for entry in sys.path):
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        raise ConfigError(f"cannot import {path}: {_describe(exc)}") from exc
    origin = getattr(module, "__file__", None)
    if origin is None or Path(origin).resolve() != file:
        raise ConfigError(
            f"cannot import {path}: the module name {name!r} is taken by "
            f"{origin or 'a built-in module'}; rename the file"
        )
    return module


def load_module(name: str) -> ModuleType:
    """Import a module by dotted name (the current folder is searched first, as ``python -m``).

    Raises:
        ConfigError: the module is missing or fails to import.
    """
    cwd = os.getcwd()
    if not any(_same_dir(entry, Path(cwd)) for entry in sys.path):
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        raise ConfigError(f"cannot import module {name}: {_describe(exc)}") from exc


def load(
    paths: Iterable[str | os.PathLike[str]] = (), modules: Iterable[str] = ()
) -> list[ModuleType]:
    """Import every file under ``paths`` and every module in ``modules``; return them in order.

    Example:
        >>> load(["dags/"], ["myapp.workers"])   # doctest: +SKIP
        [<module 'etl' from '/app/dags/etl.py'>, <module 'myapp.workers' from '...'>]
    """
    loaded = [load_file(file) for file in python_files(paths)]
    loaded.extend(load_module(name) for name in modules)
    return loaded


def _same_dir(entry: str, folder: Path) -> bool:
    try:
        return Path(entry or os.getcwd()).resolve() == folder
    except OSError:
        return False


def _describe(exc: BaseException) -> str:
    """Name the error and where it happened (the innermost frame), on one line."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, SyntaxError):
        return text  # its message already names the file and line
    frames = traceback.extract_tb(exc.__traceback__)
    here = str(Path(__file__).resolve())
    user = [f for f in frames if "importlib" not in f.filename and f.filename != here]
    if user:
        last = user[-1]
        text += f" (at {last.filename}, line {last.lineno})"
    return text


__all__ = ["default_paths", "load", "load_file", "load_module", "module_name", "python_files"]
