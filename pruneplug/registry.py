"""The plugin registry: loads backends through pluggy and picks one per call.

The built-in backends are ordinary plugins found through the ``pruneplug`` entry-point group, the
same way a third party's are. A plugin that fails to import or register is reported (a
:class:`~pruneplug.errors.PluginLoadWarning` and a row in :func:`pruneplug.backends`) and never
breaks ``import pruneplug``. ``PRUNEPLUG_DISABLE_PLUGINS`` (comma-separated entry-point names)
skips plugins; ``PRUNEPLUG_BACKEND`` sets the default backend (``"auto"`` when unset).

The one piece of global state in pruneplug is the plugin manager held here.
"""

from __future__ import annotations

import os
import threading
import warnings
from importlib import metadata
from typing import Any, Callable

import pluggy

from pruneplug import hookspecs
from pruneplug.errors import BackendNotFoundError, BackendUnavailableError, PluginLoadWarning
from pruneplug.types import BackendInfo, BackendStatus

ENTRY_POINT_GROUP = "pruneplug"


class Registry:
    """A pluggy plugin manager plus the bookkeeping to pick a backend.

    Example::

        reg = Registry()
        reg.load_entry_points()
        name = reg.select("auto", array_type="numpy", dtype="float32", operation="nm_mask")
        mask = reg.call(name, "nm_mask", values=w, n=2, m=4, axis=1, transform="abs", out=None)
    """

    def __init__(self) -> None:
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.plugin_manager.add_hookspecs(hookspecs)
        self._failures: dict[str, str] = {}  # plugin name -> error text
        self._infos: dict[str, tuple[BackendInfo, Any]] = {}  # backend name -> (info, plugin)
        self._infos_loaded = False
        self._callers: dict[tuple[str, str], tuple[Callable[..., Any], tuple[str, ...], tuple[str, ...]]] = {}
        self._selected: dict[tuple[str, str, str, str], str] = {}
        self._lock = threading.RLock()

    # -- loading ---------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Register every plugin of the ``pruneplug`` entry-point group, isolating failures."""
        disabled = {n.strip() for n in os.environ.get("PRUNEPLUG_DISABLE_PLUGINS", "").split(",") if n.strip()}
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in disabled or self.plugin_manager.has_plugin(entry_point.name):
                continue
            try:
                plugin = entry_point.load()
                self.register(plugin, entry_point.name)
            except Exception as exc:  # a broken third-party plugin must not break the host
                self._report_failure(entry_point.name, f"{type(exc).__name__}: {exc}")

    def register(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object or module; return the name it is registered under."""
        with self._lock:
            registered = self.plugin_manager.register(plugin, name=name)
            if registered is None:
                raise ValueError(f"plugin {name or plugin!r} is blocked or already registered")
            self._forget()
            return registered

    def unregister(self, name: str) -> None:
        """Unregister the plugin that provides backend (or plugin) ``name``."""
        with self._lock:
            self._ensure_infos()
            plugin = self._infos[name][1] if name in self._infos else self.plugin_manager.get_plugin(name)
            if plugin is None:
                raise BackendNotFoundError(f"backend {name!r} is not registered")
            self.plugin_manager.unregister(plugin)
            self._forget()

    def _forget(self) -> None:
        """Drop everything derived from the set of plugins (it just changed)."""
        self._infos_loaded = False
        self._callers.clear()
        self._selected.clear()

    def _report_failure(self, plugin_name: str, error: str) -> None:
        self._failures[plugin_name] = error
        warnings.warn(
            f"pruneplug plugin {plugin_name!r} failed to load and is skipped: {error}",
            PluginLoadWarning,
            stacklevel=3,
        )

    # -- declarations ----------------------------------------------------------------------
    def _ensure_infos(self) -> None:
        if self._infos_loaded:
            return
        with self._lock:
            if self._infos_loaded:
                return
            infos: dict[str, tuple[BackendInfo, Any]] = {}
            for impl in self.plugin_manager.hook.pruneplug_backend_info.get_hookimpls():
                try:
                    info = impl.function()
                    if not isinstance(info, BackendInfo):
                        raise TypeError(f"pruneplug_backend_info returned {type(info).__name__}, expected BackendInfo")
                except Exception as exc:
                    self._report_failure(impl.plugin_name, f"{type(exc).__name__}: {exc}")
                    continue
                if info.name in infos:
                    self._report_failure(impl.plugin_name, f"backend name {info.name!r} is already taken")
                    continue
                infos[info.name] = (info, impl.plugin)
            self._infos = infos
            self._infos_loaded = True

    def info(self, name: str) -> BackendInfo:
        self._ensure_infos()
        if name not in self._infos:
            known = ", ".join(sorted(self._infos)) or "none"
            raise BackendNotFoundError(f"backend={name!r} is not registered; registered backends: {known}")
        return self._infos[name][0]

    def statuses(self) -> list[BackendStatus]:
        """Every backend and every plugin that failed to load, highest priority first."""
        self._ensure_infos()
        rows = [
            BackendStatus(
                name=info.name,
                available=info.available,
                reason=info.reason,
                priority=info.priority,
                array_types=info.array_types,
                dtypes=info.dtypes,
                operations=info.operations,
                plugin=self.plugin_manager.get_name(plugin) or "?",
            )
            for info, plugin in self._infos.values()
        ]
        rows.sort(key=lambda r: (-r.priority, r.name))
        for plugin_name, error in sorted(self._failures.items()):
            rows.append(
                BackendStatus(
                    name=plugin_name,
                    available=False,
                    reason=f"plugin failed to load: {error}",
                    priority=0,
                    array_types=frozenset(),
                    dtypes=frozenset(),
                    operations=frozenset(),
                    plugin=plugin_name,
                    error=error,
                )
            )
        return rows

    # -- selection and calls ---------------------------------------------------------------
    def select(self, backend: str | None, *, array_type: str, dtype: str, operation: str) -> str:
        """The backend to run ``operation``: the named one (or an error saying why it cannot run),
        or for ``"auto"`` the highest-priority available one that supports it. Never a silent
        fallback from a named backend."""
        if backend is None:
            backend = os.environ.get("PRUNEPLUG_BACKEND", "auto") or "auto"
        key = (backend, array_type, dtype, operation)
        selected = self._selected.get(key)
        if selected is None:
            selected = self._select(backend, array_type, dtype, operation)
            self._selected[key] = selected  # only successful choices are remembered
        return selected

    def _select(self, backend: str, array_type: str, dtype: str, operation: str) -> str:
        self._ensure_infos()
        if backend != "auto":
            info = self.info(backend)
            if not info.available:
                raise BackendUnavailableError(f"backend={backend!r} is not available here: {info.reason}")
            self._check_support(info, array_type, dtype, operation)
            return backend
        candidates = [
            info
            for info, _ in self._infos.values()
            if info.available and info.supports(array_type, dtype, operation)
        ]
        if not candidates:
            raise BackendUnavailableError(
                f"no available backend supports {operation} on {array_type} arrays of dtype {dtype}; "
                f"see pruneplug.backends()"
            )
        return max(candidates, key=lambda i: (i.priority, i.name)).name

    @staticmethod
    def _check_support(info: BackendInfo, array_type: str, dtype: str, operation: str) -> None:
        if array_type not in info.array_types:
            raise BackendUnavailableError(
                f"backend={info.name!r} takes {sorted(info.array_types)} arrays, got a {array_type} array"
            )
        if dtype not in info.dtypes:
            raise BackendUnavailableError(
                f"backend={info.name!r} does not support dtype {dtype}; it supports {sorted(info.dtypes)}"
            )
        if operation not in info.operations:
            raise BackendUnavailableError(f"backend={info.name!r} does not implement {operation}")

    def supports(self, backend: str, operation: str) -> bool:
        return operation in self.info(backend).operations

    def call(self, backend: str, operation: str, **kwargs: Any) -> Any:
        """Call ``operation``'s hook on ``backend``'s plugin alone (keywords only).

        The one implementation is called the way pluggy calls it (the arguments it names, so a
        plugin may accept fewer than the spec; those with defaults by keyword), without pluggy's
        per-call machinery: the backend is already chosen, and for small arrays those microseconds
        are the cost.
        """
        key = (backend, operation)
        target = self._callers.get(key)
        if target is None:
            target = self._implementation(backend, operation)
            self._callers[key] = target
        function, argnames, kwargnames = target
        return function(*[kwargs[name] for name in argnames],
                        **{name: kwargs[name] for name in kwargnames if name in kwargs})

    def _implementation(self, backend: str, operation: str):
        self._ensure_infos()
        plugin = self._infos[backend][1]
        hook = getattr(self.plugin_manager.hook, f"pruneplug_{operation}")
        for impl in hook.get_hookimpls():
            if impl.plugin is plugin:
                return impl.function, tuple(impl.argnames), tuple(impl.kwargnames)
        raise BackendUnavailableError(f"backend={backend!r} declares {operation} but implements no pruneplug_{operation}")


_registry: Registry | None = None
_registry_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, created and loaded on first use."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                registry = Registry()
                registry.load_entry_points()
                _registry = registry
    return _registry
