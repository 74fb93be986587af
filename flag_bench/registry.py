"""One small registry type for methods, datasets, metrics, encoders and panel selectors.

Built-ins are registered as ``"module:attr"`` strings and imported on first use, so listing
names never imports torch. Plugins come from ``importlib.metadata`` entry points in the group
``flag_bench.<kind>``; built-ins win name clashes and a plugin that fails to load is a warning.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import warnings
from typing import Any, Generic, Iterator, TypeVar

from flag_bench.errors import UserError

T = TypeVar("T")


@functools.lru_cache(maxsize=1)
def _entry_points():
    """All installed entry points, read once per process (scanning metadata is the slow part)."""
    from importlib.metadata import entry_points

    return entry_points()


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: dict[str, str]):
        self.kind = kind
        self._builtin = dict(builtins)
        self._entries: dict[str, Any] | None = None  # name -> "mod:attr" | EntryPoint | object
        self._origin: dict[str, str] = {}
        self._resolved: dict[str, Any] = {}

    # -- discovery ---------------------------------------------------------------------------
    def _discover(self) -> dict[str, Any]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, Any] = dict(self._builtin)
        self._origin = {name: "built-in" for name in entries}
        try:
            eps = _entry_points().select(group=f"flag_bench.{self.kind}")
        except Exception as exc:  # pragma: no cover - broken metadata
            warnings.warn(f"flag-bench: could not read {self.kind} plugins: {exc}", stacklevel=2)
            eps = ()
        for ep in eps:
            if ep.name in entries:
                warnings.warn(
                    f"flag-bench: plugin {self.kind} '{ep.name}' from {ep.value} clashes with a "
                    "built-in and is ignored; rename it in its entry point",
                    stacklevel=2,
                )
                continue
            entries[ep.name] = ep
            self._origin[ep.name] = f"plugin ({ep.value})"
        self._entries = entries
        return entries

    def register(self, name: str, obj: Any, *, origin: str = "runtime") -> None:
        entries = self._discover()
        if name in entries:
            raise ValueError(f"{self.kind} '{name}' is already registered ({self._origin[name]})")
        entries[name] = obj
        self._origin[name] = origin

    def unregister(self, name: str) -> None:
        """Remove a runtime registration (tests)."""
        self._discover().pop(name, None)
        self._origin.pop(name, None)
        self._resolved.pop(name, None)

    # -- lookup ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._discover())

    def origin(self, name: str) -> str:
        self._discover()
        return self._origin.get(name, "?")

    def __contains__(self, name: str) -> bool:
        return name in self._discover()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def check(self, name: str) -> str:
        """Raise a UserError with a close-match suggestion if ``name`` is unknown."""
        entries = self._discover()
        if name not in entries:
            close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UserError(
                f"unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} '{name}'{hint} "
                f"(known: {', '.join(sorted(entries))}; see `flag-bench list`)"
            )
        return name

    def get(self, name: str) -> T:
        entries = self._discover()
        self.check(name)
        if name in self._resolved:
            return self._resolved[name]
        obj = entries[name]
        if isinstance(obj, str):
            module, _, attr = obj.partition(":")
            obj = getattr(importlib.import_module(module), attr)
        elif hasattr(obj, "load") and hasattr(obj, "group"):  # EntryPoint
            try:
                obj = obj.load()
            except Exception as exc:
                warnings.warn(
                    f"flag-bench: plugin {self.kind} '{name}' failed to load ({type(exc).__name__}: "
                    f"{exc}); it is skipped",
                    stacklevel=2,
                )
                del entries[name]
                raise UserError(f"{self.kind} plugin '{name}' failed to load: {exc}") from None
        self._resolved[name] = obj
        return obj  # type: ignore[return-value]

    def load_all(self) -> dict[str, T]:
        """Import every entry; broken plugins are warned about and left out."""
        out: dict[str, T] = {}
        for name in list(self._discover()):
            try:
                out[name] = self.get(name)
            except UserError:
                continue
        return out
