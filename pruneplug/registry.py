"""The plugin registry: loads backends through pluggy and picks one per call.

The built-in backends are ordinary plugins found through the ``pruneplug`` entry-point group, the
same way a third party's are. A plugin that fails to import or register is reported (a
:class:`~pruneplug.errors.PluginLoadWarning` and a row in :func:`pruneplug.backends`) and never
breaks ``import pruneplug``. ``PRUNEPLUG_DISABLE_PLUGINS`` (comma-separated entry-point names)
skips plugins, except the ``numpy`` reference backend: it is the specification every backend and
the conformance kit compare with, so it is always registered; ``PRUNEPLUG_BACKEND`` sets the default backend (``"auto"`` when unset).

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
from pruneplug.errors import BackendNotFoundError, BackendUnavailableError, PluginLoadWarning, PluginRegistrationError
from pruneplug.backend_info import OPERATIONS, BackendInfo, BackendStatus

ENTRY_POINT_GROUP = "pruneplug"
#: The entry point of the reference backend (the specification): never disabled.
REFERENCE_PLUGIN = "numpy"


class RegistryView:
    """The registry as it was at one moment: the backends, their plugins and their hook
    implementations, never changed after it is built (a registration or unregistration builds a
    new view). A call selects and calls on one view, so a plugin unregistered by another thread in
    between cannot make it fail: the call finishes on the backends it started with.

    Selections and resolved hooks are memoised per view (plain dict writes of values that depend
    only on the view: safe under concurrent calls).
    """

    def __init__(self, backends: dict[str, tuple[BackendInfo, str]],
                 implementations: dict[tuple[str, str], tuple[Callable[..., Any], tuple[str, ...], tuple[str, ...]]]):
        self._backends = backends  # backend name -> (info, plugin name)
        self._implementations = implementations  # (backend, operation) -> (function, argnames, kwargnames)
        self._selected: dict[tuple[str, str, str, str], str] = {}

    def names(self) -> list[str]:
        return list(self._backends)

    def plugin_name(self, name: str) -> str:
        return self._backends[name][1]

    def info(self, name: str) -> BackendInfo:
        if name not in self._backends:
            known = ", ".join(sorted(self._backends)) or "none"
            raise BackendNotFoundError(f"backend={name!r} is not registered; registered backends: {known}")
        return self._backends[name][0]

    def supports(self, backend: str, operation: str) -> bool:
        return operation in self.info(backend).operations

    def accepts(self, backend: str, operation: str, keyword: str) -> bool:
        """Whether ``backend``'s implementation of ``operation`` names the optional ``keyword``
        (a hook may accept fewer arguments than its spec: a caller that passes something only some
        implementations understand, such as raw bits with ``dtype=``, asks first)."""
        target = self._implementations.get((backend, operation))
        return target is not None and keyword in target[1] + target[2]

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
        if backend != "auto":
            info = self.info(backend)
            if not info.available:
                raise BackendUnavailableError(f"backend={backend!r} is not available here: {info.reason}")
            _check_support(info, array_type, dtype, operation)
            return backend
        candidates = [
            info
            for info, _ in self._backends.values()
            if info.available and info.supports(array_type, dtype, operation)
        ]
        if not candidates:
            raise BackendUnavailableError(
                f"no available backend supports {operation} on {array_type} arrays of dtype {dtype}; "
                f"see pruneplug.backends()"
            )
        return max(candidates, key=lambda i: (i.priority, i.name)).name

    def call(self, backend: str, operation: str, **kwargs: Any) -> Any:
        """Call ``operation``'s hook on ``backend``'s plugin alone (keywords only).

        The one implementation is called the way pluggy calls it (the arguments it names, so a
        plugin may accept fewer than the spec; those with defaults by keyword), without pluggy's
        per-call machinery: the backend is already chosen, and for small arrays those microseconds
        are the cost.
        """
        target = self._implementations.get((backend, operation))
        if target is None:
            self.info(backend)  # BackendNotFoundError for an unknown name
            raise BackendUnavailableError(
                f"backend={backend!r} declares {operation} but implements no pruneplug_{operation}")
        function, argnames, kwargnames = target
        return function(*[kwargs[name] for name in argnames],
                        **{name: kwargs[name] for name in kwargnames if name in kwargs})


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


class Registry:
    """A pluggy plugin manager plus the bookkeeping to pick a backend.

    Example::

        reg = Registry()
        reg.load_entry_points()
        view = reg.snapshot()  # select and call on the same set of backends
        name = view.select("auto", array_type="numpy", dtype="float32", operation="nm_mask")
        mask = view.call(name, "nm_mask", values=w, n=2, m=4, axis=1, transform="abs", out=None)
    """

    def __init__(self) -> None:
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.plugin_manager.add_hookspecs(hookspecs)
        self._failures: dict[str, str] = {}  # plugin name -> error text
        self._view: RegistryView | None = None  # None: rebuild on next use
        self._lock = threading.RLock()

    # -- loading ---------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Register every plugin of the ``pruneplug`` entry-point group, isolating failures."""
        disabled = {n.strip() for n in os.environ.get("PRUNEPLUG_DISABLE_PLUGINS", "").split(",") if n.strip()}
        disabled.discard(REFERENCE_PLUGIN)
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
            try:
                registered = self.plugin_manager.register(plugin, name=name)
            except pluggy.PluginValidationError as exc:  # pluggy's text names the plugin, hook and argument
                raise PluginRegistrationError(" ".join(str(exc).split())) from exc
            except ValueError as exc:  # pluggy: the name or the object is already registered
                raise PluginRegistrationError(f"plugin {name or plugin!r} is already registered") from exc
            if registered is None:
                raise PluginRegistrationError(f"plugin {name or plugin!r} is blocked or already registered")
            self._view = None
            return registered

    def unregister(self, name: str) -> None:
        """Unregister the plugin that provides backend (or plugin) ``name``."""
        with self._lock:
            view = self.snapshot()
            plugin_name = view.plugin_name(name) if name in view.names() else name
            plugin = self.plugin_manager.get_plugin(plugin_name)
            if plugin is None:
                raise BackendNotFoundError(f"backend {name!r} is not registered")
            self.plugin_manager.unregister(plugin)
            self._view = None

    def _report_failure(self, plugin_name: str, error: str) -> None:
        self._failures[plugin_name] = error
        warnings.warn(
            f"pruneplug plugin {plugin_name!r} failed to load and is skipped: {error}",
            PluginLoadWarning,
            stacklevel=3,
        )

    # -- the current view --------------------------------------------------------------------
    def snapshot(self) -> RegistryView:
        """The registry as it is now, immutable: select and call on it so that a concurrent
        (un)registration cannot change the backends under a call that has started."""
        view = self._view
        if view is None:
            with self._lock:
                if self._view is None:
                    self._view = self._build_view()
                view = self._view
        return view

    def _build_view(self) -> RegistryView:
        backends: dict[str, tuple[BackendInfo, str]] = {}
        plugins: dict[int, str] = {}  # id(plugin) -> backend name
        for impl in self.plugin_manager.hook.pruneplug_backend_info.get_hookimpls():
            try:
                info = impl.function()
                if not isinstance(info, BackendInfo):
                    raise TypeError(f"pruneplug_backend_info returned {type(info).__name__}, expected BackendInfo")
            except Exception as exc:
                self._report_failure(impl.plugin_name, f"{type(exc).__name__}: {exc}")
                continue
            if info.name in backends:
                self._report_failure(impl.plugin_name, f"backend name {info.name!r} is already taken")
                continue
            backends[info.name] = (info, impl.plugin_name)
            plugins[id(impl.plugin)] = info.name
        implementations = {}
        for operation in OPERATIONS:
            hook = getattr(self.plugin_manager.hook, f"pruneplug_{operation}", None)
            for impl in hook.get_hookimpls() if hook is not None else ():
                name = plugins.get(id(impl.plugin))
                if name is not None:
                    implementations[(name, operation)] = (impl.function, tuple(impl.argnames), tuple(impl.kwargnames))
        return RegistryView(backends, implementations)

    # -- declarations ----------------------------------------------------------------------
    def info(self, name: str) -> BackendInfo:
        return self.snapshot().info(name)

    def statuses(self) -> list[BackendStatus]:
        """Every backend and every plugin that failed to load, highest priority first."""
        view = self.snapshot()
        rows = [
            BackendStatus(
                name=info.name,
                available=info.available,
                reason=info.reason,
                priority=info.priority,
                array_types=info.array_types,
                dtypes=info.dtypes,
                operations=info.operations,
                plugin=view.plugin_name(name),
            )
            for name in view.names()
            for info in (view.info(name),)
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

    # -- selection and calls (each on the current view; use snapshot() to do both on one) ------
    def select(self, backend: str | None, *, array_type: str, dtype: str, operation: str) -> str:
        """:meth:`RegistryView.select` on the current view."""
        return self.snapshot().select(backend, array_type=array_type, dtype=dtype, operation=operation)

    def supports(self, backend: str, operation: str) -> bool:
        return self.snapshot().supports(backend, operation)

    def accepts(self, backend: str, operation: str, keyword: str) -> bool:
        """:meth:`RegistryView.accepts` on the current view."""
        return self.snapshot().accepts(backend, operation, keyword)

    def call(self, backend: str, operation: str, **kwargs: Any) -> Any:
        """:meth:`RegistryView.call` on the current view."""
        return self.snapshot().call(backend, operation, **kwargs)


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
