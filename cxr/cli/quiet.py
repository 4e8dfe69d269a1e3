"""TensorFlow's start-up lines, silenced for the command line unless ``cxr -v``.

Importing TensorFlow prints, from C++ straight to file descriptor 2, absl's "All log messages
before absl::InitializeLog() is called are written to STDERR", oneDNN's "custom operations are
on" and the CPU feature guard; ``TF_CPP_MIN_LOG_LEVEL`` no longer reaches the first two. They
say nothing an operator can act on and bury the one line that matters, so while TensorFlow is
first imported, descriptor 2 points at /dev/null. Python's own errors are unaffected: an import
that fails still raises, and the message is printed after the descriptor is restored.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

_QUIET_MODULES = ("tensorflow",)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block (what C++ libraries write to)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietLoader(importlib.abc.Loader):
    """Delegates to the real loader; runs the module's body with descriptor 2 silenced."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with native_stderr_silenced():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _QuietImport(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _QUIET_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


def silence_tensorflow_startup() -> None:
    """From now on, TensorFlow's first import is silent on descriptor 2 (idempotent)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if any(module in sys.modules for module in _QUIET_MODULES):
        return
    if not any(isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())
