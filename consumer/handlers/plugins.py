"""Handler plugins: find them by entry point name or `module:attr`, build them, route them.

A plugin package declares its handlers as entry points in its own pyproject.toml::

    [project.entry-points."alicom_receipts.handlers"]
    example-print = "alicom_example_plugin:PrintHandler"

and the configuration selects them by name (only what the config names is loaded: the
installed set is a menu, not an allowlist)::

    [[handlers]]
    use = "example-print"            # or "my_package.module:on_report"
    types = ["SmsReport"]            # optional
    name = "printer"                 # optional label for logs and metrics
    options = { prefix = ">>" }      # keyword arguments of the class

A target may be a function decorated with `@handler`, a plain function taking one receipt, a
class (instantiated with `**options`) or a ready instance. Every loading problem becomes one
`PluginError` whose message is a single line naming the handler and the cause.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast

import structlog

from consumer.errors import ConfigError
from consumer.handler_api import (
    AnyHandler,
    BatchHandler,
    BatchResult,
    FunctionHandler,
    Handler,
    handler_name,
    is_batch_handler,
)
from consumer.handlers import one_line
from consumer.receipts import MESSAGE_TYPES, Receipt

log = structlog.get_logger(__name__)

GROUP = "alicom_receipts.handlers"
"""The entry point group plugins register their handlers in."""


class PluginError(ConfigError):
    """A handler could not be loaded or built; the message is one line: which and why."""


@dataclass(frozen=True)
class HandlerSpec:
    """One configured handler.

    `use`: an entry point name in group `alicom_receipts.handlers`, or `module:attr`.
    `types`: the message types it gets; None means the handler's own `types`, else all.
    `options`: keyword arguments for a class target (an error for any other target).
    `name`: the label in logs and metrics; default the handler's `name`, else `use`.
    """

    use: str
    types: tuple[str, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)  # dicts don't hash
    name: str | None = None


def available_handlers() -> dict[str, EntryPoint]:
    """The installed handler plugins by entry point name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_handlers(specs: Iterable[HandlerSpec]) -> dict[str, list[AnyHandler]]:
    """Builds every spec and returns message type -> its handlers, in config order.

    Types without handlers are absent. Handler names must be unique (set `name` to use one
    plugin twice). On any error the handlers built so far are closed and PluginError raised.
    """
    routes: dict[str, list[AnyHandler]] = {}
    built: list[AnyHandler] = []
    try:
        for spec in specs:
            _add(spec, built, routes)
    except PluginError:
        close_handlers({"": built})
        raise
    return routes


def _add(spec: HandlerSpec, built: list[AnyHandler], routes: dict[str, list[AnyHandler]]) -> None:
    """Builds one spec into `built` (first, so a later error still closes it) and `routes`."""
    target, default_name = _resolve(spec.use)
    raw = _instantiate(spec, target)
    built.append(raw)
    types = _types_for(spec, raw)
    obj = built[-1] = _named(raw, spec.name or _own_name(raw) or default_name)
    name = handler_name(obj)
    if any(handler_name(other) == name for other in built[:-1]):
        raise PluginError(f"handler name '{name}' is used twice; give each use of "
                          f"'{spec.use}' its own `name`")
    for kind in types:
        routes.setdefault(kind, []).append(obj)


def close_handlers(routes: Mapping[str, Sequence[object]]) -> None:
    """Calls `close()` once on every handler that has one; a crash there is logged, not raised.

    Shutdown must go on even if one plugin fails to clean up (as Dramatiq treats its hooks).
    """
    seen: set[int] = set()
    for handlers in routes.values():
        for obj in handlers:
            # two renamed uses of one instance share it: close it once
            identity = id(obj.inner if isinstance(obj, _NamedSingle | _NamedBatch) else obj)
            if identity in seen:
                continue
            seen.add(identity)
            close = getattr(obj, "close", None)
            if not callable(close):
                continue
            try:
                close()
            except Exception:  # a plugin's cleanup must never stop shutdown
                log.exception("handler_close_failed", handler=handler_name(obj))


def _resolve(use: str) -> tuple[object, str]:
    """The object `use` names, and the default name for it."""
    plugins = available_handlers()
    entry = plugins.get(use)
    if entry is not None:
        return _import_ref(f"{entry.module}:{entry.attr or ''}", use), use
    if ":" in use:
        return _import_ref(use, use), use.partition(":")[2].rpartition(".")[2]
    known = ", ".join(sorted(plugins)) or "none installed"
    raise PluginError(
        f"unknown handler '{use}': no entry point of that name in group '{GROUP}' "
        f"(available: {known}); use an available name or 'module:attr'")


def _import_ref(ref: str, label: str) -> object:
    module_name, _, attr_path = ref.partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    if not module_name or not attr_path:
        raise PluginError(f"bad handler reference '{ref}' for '{label}': expected 'module:attr'")
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as exc:  # any import-time crash of a plugin is a config problem
        raise PluginError(
            f"cannot import module '{module_name}' for handler '{label}': {one_line(exc)}",
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise PluginError(
                f"module '{module_name}' has no attribute '{attr_path}' (handler '{label}')",
            ) from exc
    return obj


def _is_handler_object(obj: object) -> bool:
    return is_batch_handler(obj) or callable(getattr(obj, "handle", None))


def _instantiate(spec: HandlerSpec, target: object) -> AnyHandler:
    if inspect.isclass(target):
        try:
            obj: object = target(**spec.options)
        except TypeError as exc:
            raise PluginError(
                f"bad options for handler '{spec.use}' ({target.__qualname__}): {one_line(exc)}",
            ) from exc
        except Exception as exc:  # its own validation (ConfigError, ValueError, OSError...)
            raise PluginError(f"handler '{spec.use}' failed to start: {one_line(exc)}") from exc
        if not _is_handler_object(obj):
            raise PluginError(f"'{spec.use}' is not a handler: {target.__qualname__} has "
                              "neither handle(receipt) nor handle_batch(receipts)")
        return cast(AnyHandler, obj)
    if _is_handler_object(target) or callable(target):
        if spec.options:
            raise PluginError(
                f"handler '{spec.use}' takes no options ({sorted(spec.options)} given): only a "
                "class target gets options")
        if _is_handler_object(target):
            return cast(AnyHandler, target)
        return FunctionHandler(cast(Callable[[Receipt], object], target),
                               str(getattr(target, "__name__", "")), None)
    raise PluginError(f"'{spec.use}' is not a handler: expected a function, a class or an "
                      f"object with handle() or handle_batch(), got {type(target).__name__}")


def _types_for(spec: HandlerSpec, obj: object) -> tuple[str, ...]:
    declared: object = spec.types if spec.types is not None else getattr(obj, "types", None)
    if declared is None:
        return tuple(MESSAGE_TYPES)
    if isinstance(declared, str):  # `types = "SmsReport"` means one type, not its letters
        declared = (declared,)
    if not isinstance(declared, Iterable):
        raise PluginError(f"handler '{spec.use}': types must be a list of message types")
    types = tuple(str(kind) for kind in declared)
    unknown = [kind for kind in types if kind not in MESSAGE_TYPES]
    if unknown or not types:
        raise PluginError(
            f"handler '{spec.use}': unknown or no message types {unknown} "
            f"(known: {', '.join(MESSAGE_TYPES)})")
    return types


def _own_name(obj: object) -> str | None:
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) and name else None


def _named(obj: AnyHandler, name: str) -> AnyHandler:
    """`obj` labelled `name`: itself when it already is, else a forwarding wrapper."""
    if _own_name(obj) == name:
        return obj
    if isinstance(obj, FunctionHandler):
        return FunctionHandler(obj.__wrapped__, name, obj.types)
    if is_batch_handler(obj):
        return _NamedBatch(cast(BatchHandler, obj), name)
    return _NamedSingle(cast(Handler, obj), name)


class _NamedSingle:
    """Gives a handler another name; forwards `handle` and `close`."""

    def __init__(self, inner: Handler, name: str) -> None:
        self.inner = inner
        self.name = name

    def handle(self, receipt: Receipt) -> None:
        self.inner.handle(receipt)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()


class _NamedBatch:
    """Gives a batch handler another name; forwards `handle_batch` and `close`."""

    def __init__(self, inner: BatchHandler, name: str) -> None:
        self.inner = inner
        self.name = name

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        return self.inner.handle_batch(receipts)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()
