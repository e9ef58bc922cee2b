"""The probe registry: every probe is a function `fn(ctx) -> rows`, found by name.

A probe is declared with the `@probe` decorator in any file of the top-level `probes/` package;
`discover()` imports them all. Adding a probe is adding a file::

    # probes/my_probe.py
    from workbench.probing import Row, probe

    @probe("my_probe", needs=("stats",))
    def my_probe(ctx):
        \"\"\"One line that `workbench probe --list` shows.\"\"\"
        pooled = ctx.stats[(0, "query")]            # pooled statistics of layer 0, query stream
        yield Row(layer=0, stream="query", head=0, metric="...", value=...)

`needs` tells the runner what work the probe reads, so that it runs only what is asked for:
"stats" (attention statistics pooled over the dataset: one hooked pass), "model" (the probe runs
the model itself, e.g. causal interventions); an empty tuple means model-free.

A name used twice is an error that quotes where the first one was defined (like
lm-evaluation-harness's task index), so two files can never silently shadow each other.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.probing.context import ProbeContext
    from workbench.probing.table import Row

ProbeFn = Callable[["ProbeContext"], Iterable["Row"]]
NEEDS = ("stats", "model")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
PROBE_PATH_ENV = "WORKBENCH_PROBE_PATH"
"""Extra directories of probe files, separated by os.pathsep, searched after `probes/`."""


class ProbeRegistryError(ValueError):
    """A probe cannot be registered or found: the message says why and how to fix it."""


@dataclass(frozen=True)
class Probe:
    name: str
    fn: ProbeFn
    needs: frozenset[str]
    description: str
    source: str
    """Where it was defined, as `file:line`."""

    def __call__(self, ctx: ProbeContext) -> Iterable[Row]:
        return self.fn(ctx)


_REGISTRY: dict[str, Probe] = {}
_DISCOVERED = False


def probe(name: str, *, needs: Iterable[str] = ("stats",), description: str | None = None) -> Callable[[ProbeFn], ProbeFn]:
    """Register `fn(ctx) -> Iterable[Row]` as the probe `name` (see the module docstring)."""

    def decorate(fn: ProbeFn) -> ProbeFn:
        doc = description or (inspect.getdoc(fn) or "").split("\n")[0]
        register(Probe(name, fn, frozenset(needs), doc, _source_of(fn)))
        return fn

    return decorate


def register(entry: Probe) -> None:
    if not isinstance(entry.name, str) or not NAME_RE.match(entry.name):
        raise ProbeRegistryError(
            f"probe name {entry.name!r} (at {entry.source}) must be lower-case letters, digits and "
            "underscores, starting with a letter, e.g. 'semantic_parts'."
        )
    unknown = sorted(set(entry.needs) - set(NEEDS))
    if unknown:
        raise ProbeRegistryError(
            f"probe {entry.name!r} (at {entry.source}) needs {unknown}, which the runner does not "
            f"provide; use a subset of {NEEDS}."
        )
    first = _REGISTRY.get(entry.name)
    if first is not None and first.source != entry.source:  # the same file imported twice is fine
        raise ProbeRegistryError(
            f"probe name {entry.name!r} is defined twice: first at {first.source}, again at "
            f"{entry.source}. Rename one of them."
        )
    _REGISTRY[entry.name] = entry


def unregister(name: str) -> None:
    """Forget a probe (for tests and notebooks that redefine one)."""
    _REGISTRY.pop(name, None)


def discover(extra_dirs: Iterable[str | Path] = ()) -> dict[str, Probe]:
    """Import every probe file of the `probes` package, of $WORKBENCH_PROBE_PATH and of
    `extra_dirs`; returns the registry (name -> Probe), sorted by name."""
    global _DISCOVERED
    if not _DISCOVERED:
        import probes as package

        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")
        _DISCOVERED = True
    env_dirs = [d for d in os.environ.get(PROBE_PATH_ENV, "").split(os.pathsep) if d]
    for directory in [*env_dirs, *extra_dirs]:
        _import_dir(Path(directory))
    return dict(sorted(_REGISTRY.items()))


def get(names: Iterable[str] | None = None) -> list[Probe]:
    """The probes called `names` (all registered probes when None), in the order given."""
    registry = discover()
    if names is None:
        return list(registry.values())
    names = list(names)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ProbeRegistryError(
            f"unknown probe(s) {unknown}; known probes: {', '.join(registry) or 'none'}. Add a "
            "probe by adding a file to probes/ (see docs/probes.md)."
        )
    if len(set(names)) != len(names):
        raise ProbeRegistryError(f"probe list {names} names a probe twice.")
    return [registry[n] for n in names]


def _import_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise ProbeRegistryError(f"probe directory {directory} does not exist (from ${PROBE_PATH_ENV} or extra_dirs).")
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module_name = f"_workbench_probe_{abs(hash(str(path.resolve())))}_{path.stem}"
        if module_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise


def _source_of(fn: Callable) -> str:
    try:
        file = inspect.getsourcefile(fn) or "?"
        line = inspect.getsourcelines(fn)[1]
    except (OSError, TypeError):
        return getattr(fn, "__module__", "?")
    return f"{Path(file).resolve()}:{line}"
