"""Loading validator plug-ins: from the ``cascade.validators`` entry-point group, and from
the folders a config names in ``validator_paths``.

Either way a plug-in registers exactly as a user's own validator does, through
``@cascade.validator(name)``; these loaders only import the code that does so.

.. warning::

   Loading a plug-in runs arbitrary code: every ``*.py`` file of a named folder, and every
   module an installed distribution declares in the entry-point group. That is true of any
   plug-in system, and it is why only a config file (``validator_paths``) or an installed
   package (its entry points) names them, never a request. Treat a config file that names a
   folder like the code in that folder.

Entry points, declared by a package (``pyproject.toml``)::

    [project.entry-points."cascade.validators"]
    my_check = "my_package.validators:MyCheck"   # a factory: registered as "my_check"
    more = "my_package.more_validators"          # a module: its decorators register

A folder, named in config (relative paths resolve against the config file's folder)::

    validator_paths = ["validators"]

Each load happens once per process: loading the same folder or entry point again returns
the same names without importing anything twice.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path

from .._errors import ConfigError
from ._registry import _REGISTRY, ValidatorFactory, validator

__all__ = ["ENTRY_POINT_GROUP", "load_entry_point_validators", "load_validator_folder"]

ENTRY_POINT_GROUP = "cascade.validators"
_PACKAGE = "cascade_plugins"

_lock = threading.RLock()
# what each load registered, so that a repeated load returns the same names (and puts back
# a registration someone removed, as a test's cleanup does) without importing again
_loaded_files: dict[Path, dict[str, ValidatorFactory]] = {}
_loaded_entry_points: dict[tuple[str, str], dict[str, ValidatorFactory]] = {}


def load_entry_point_validators() -> list[str]:
    """Load every entry point of the ``cascade.validators`` group; return the validator
    names they provide.

    An entry point may name a module (importing it runs its ``@cascade.validator``
    decorators) or a factory (a class or function), which is registered under the entry
    point's name unless it registered itself. An entry point that fails to load raises
    ConfigError at ``entry_points.<name>``.
    """
    names: list[str] = []
    with _lock:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            key = (ep.name, ep.value)
            if key not in _loaded_entry_points:
                _loaded_entry_points[key] = _load_entry_point(ep)
            names.extend(n for n in _restore(_loaded_entry_points[key]) if n not in names)
    return names


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> dict[str, ValidatorFactory]:
    def load() -> list[str]:
        obj = ep.load()
        if isinstance(obj, types.ModuleType):
            # importing it ran its decorators, now or (if it was imported before) earlier
            return [n for n, f in _REGISTRY.items() if getattr(f, "__module__", "") == obj.__name__]
        if not callable(obj):
            raise TypeError(f"{type(obj).__name__} is neither a module nor a validator factory")
        names = [n for n, f in _REGISTRY.items() if f is obj]  # it registered itself
        if not names:
            validator(ep.name)(obj)
            names = [ep.name]
        return names

    return _registering(
        load, what=f"validator entry point {ep.name!r} ({ep.value})", path=f"entry_points.{ep.name}"
    )


def load_validator_folder(
    path: str | os.PathLike[str],
    *,
    base_dir: Path | None = None,
    config_path: str = "validator_paths[0]",
) -> list[str]:
    """Import every ``*.py`` file of a folder (in name order, skipping ``_``-prefixed ones,
    which plug-ins may import relatively as helpers) and return the validator names they
    registered.

    A relative ``path`` resolves against ``base_dir`` (the config file's folder), else the
    current directory. Each file is imported once per process, as a module of its own
    (``cascade_plugins.f<hash of the folder>.<stem>``). A missing folder or a file that
    fails to import raises ConfigError at ``config_path``.

    >>> load_validator_folder("validators", base_dir=Path("."))  # doctest: +SKIP
    ['pydantic_model', 'sql']
    """
    folder = Path(path).expanduser()
    if not folder.is_absolute():
        folder = (base_dir if base_dir is not None else Path.cwd()) / folder
    folder = folder.resolve()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"validator folder {str(folder)!r} {what}", path=config_path)
    names: list[str] = []
    with _lock:
        package = _folder_package(folder)
        for file in sorted(folder.glob("*.py")):
            if file.name.startswith("_") or not file.is_file():
                continue
            file = file.resolve()
            if file not in _loaded_files:
                _loaded_files[file] = _import_file(file, package, config_path)
            names.extend(n for n in _restore(_loaded_files[file]) if n not in names)
    return names


def _folder_package(folder: Path) -> str:
    """A package module standing for the folder, so that plug-ins can import their
    ``_helpers.py`` relatively; the folder's ``__init__.py``, if any, is not run."""
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    name = f"{_PACKAGE}.f{digest}"
    if _PACKAGE not in sys.modules:
        root = types.ModuleType(_PACKAGE, "Validator plug-ins loaded from folders.")
        root.__path__ = []
        sys.modules[_PACKAGE] = root
    if name not in sys.modules:
        package = types.ModuleType(name, f"Validator plug-ins from {folder}.")
        package.__path__ = [str(folder)]
        package.__package__ = name
        sys.modules[name] = package
    return name


def _import_file(file: Path, package: str, config_path: str) -> dict[str, ValidatorFactory]:
    name = f"{package}.{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has one
        raise ConfigError(f"cannot import {str(file)!r}", path=config_path)
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def load() -> list[str]:
        # in sys.modules before it runs: dataclasses and pydantic look their module up there
        sys.modules[name] = module
        try:
            loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return []

    return _registering(load, what=f"validator plug-in {str(file)!r}", path=config_path)


def _registering(
    load: Callable[[], list[str]], *, what: str, path: str
) -> dict[str, ValidatorFactory]:
    """Run ``load``; return the validators it registered (and any it reports), by name. If
    it fails, undo its registrations, so that a fixed plug-in can load later in the same
    process, and raise ConfigError at ``path``."""
    before = set(_REGISTRY)
    try:
        reported = load()
    except Exception as exc:
        for name in set(_REGISTRY) - before:
            del _REGISTRY[name]
        raise ConfigError(f"cannot load {what}: {type(exc).__name__}: {exc}", path=path) from exc
    added = [n for n in _REGISTRY if n not in before]
    return {n: _REGISTRY[n] for n in added + [n for n in reported if n not in added]}


def _restore(loaded: dict[str, ValidatorFactory]) -> list[str]:
    """Names a past load registered; one since removed from the registry is put back (one
    since replaced is left alone)."""
    for name, factory in loaded.items():
        _REGISTRY.setdefault(name, factory)
    return list(loaded)
