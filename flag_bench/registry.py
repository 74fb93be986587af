"""One small registry type for methods, datasets, metrics, encoders and panel selectors.

Built-ins are registered as ``"module:attr"`` strings and imported on first use, so listing
names never imports torch. A built-in may also name a light object (``set_light``): a torch-free
description, such as a method's card, that ``describe`` returns without importing the
implementation. Plugins come from ``importlib.metadata`` entry points in the group
``flag_bench.<kind>``; built-ins win name clashes. A plugin that fails to import stays listed as
broken (``broken()`` gives the reason): using it is one UserError, and nothing else notices it.
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
        self._light: dict[str, str] = {}
        self._broken: dict[str, str] = {}  # name -> why its import failed (one line)
        self._warned: set[str] = set()

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
        self._broken.pop(name, None)

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
        if name in self._broken:
            raise UserError(self._broken_message(name))
        obj = entries[name]
        if isinstance(obj, str):
            obj = _import(obj)
        elif _is_entry_point(obj):
            try:
                obj = obj.load()
            except Exception as exc:  # any import-time failure of someone else's package
                self._broken[name] = _one_line(exc)
                raise UserError(self._broken_message(name)) from None
        self._resolved[name] = obj
        return obj

    def broken(self, name: str) -> str | None:
        """Why plugin ``name`` cannot be imported, or None if it loads (this imports it)."""
        try:
            self.get(name)
        except UserError:
            return self._broken.get(name)
        return None

    def _broken_message(self, name: str) -> str:
        what = self.kind[:-1] if self.kind.endswith("s") else self.kind
        return (f"{what} plugin '{name}' ({self._discover()[name].value}) cannot be imported: {self._broken[name]}; "
                f"fix or uninstall the package that declares it (see `flag-bench list {self.kind}`)")

    def set_light(self, light: dict[str, str]) -> None:
        """``name -> "module:attr"`` of a torch-free description of built-in ``name``."""
        self._light.update(light)

    def describe(self, name: str, attr: str) -> Any:
        """``attr`` of entry ``name`` (e.g. a method's card), from its light object when it has
        one, so that reading it does not import the implementation."""
        self.check(name)
        if name in self._light and self.origin(name) == "built-in":
            return _import(self._light[name])
        return getattr(self.get(name), attr)

    def load_all(self) -> dict[str, T]:
        """Import every entry; a broken plugin is left out with one warning per process."""
        out: dict[str, T] = {}
        for name in list(self._discover()):
            try:
                out[name] = self.get(name)
            except UserError as exc:
                if name not in self._warned:
                    self._warned.add(name)
                    warnings.warn(f"flag-bench: {exc}; it is left out", stacklevel=2)
        return out


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _is_entry_point(obj: Any) -> bool:
    return hasattr(obj, "load") and hasattr(obj, "group")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
