"""Handler plugins: find them by entry point name or `module:attr`, build them, route them.

A plugin package declares its handlers as entry points in its own pyproject.toml::

    [project.entry-points."alicom_receipts.handlers"]
    example-print = "alicom_example_plugin:PrintHandler"

and the configuration selects them by name (only what the config names is loaded: the
installed set is a menu, not an allowlist)::

    [[handlers]]
    use = "example-print"            # or "my_package.module:on_report"
    types = ["SmsReport"]            # optional: receipt classes (default: its own, else all)
    name = "printer"                 # optional label for logs and metrics
    options = { prefix = ">>" }      # keyword arguments of the class
    deadline_s = 10                  # optional: its own deadline, max_attempts, retry backoff

A target may be a function decorated with `@handler`, a plain function taking one receipt, a
class (instantiated with `**options`) or a ready instance. Every loading problem (a declared
type its annotation does not accept included) becomes one `PluginError` whose message is a
single line naming the handler and the cause.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import cast

import structlog

from consumer.errors import ConfigError, StartupUnavailable, one_line
from consumer.handler_api import (
    AnyHandler,
    FunctionHandler,
    RoutedHandler,
    is_batch_handler,
    own_policy,
)
from consumer.handler_types import HandlerTypeError, normalise_types, receipt_classes
from consumer.pipeline.dispatch import Dispatcher, GaugeLike
from consumer.pipeline.outcome import RetryPolicy
from consumer.receipts import Receipt
from consumer.settings import HandlerSpec, Settings

log = structlog.get_logger(__name__)

GROUP = "alicom_receipts.handlers"
"""The entry point group plugins register their handlers in."""


class PluginError(ConfigError):
    """A handler could not be loaded or built; the message is one line: which and why."""


def available_handlers() -> dict[str, EntryPoint]:
    """The installed handler plugins by entry point name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_handlers(specs: Iterable[HandlerSpec], targets: Mapping[str, object] | None = None,
                  ) -> dict[str, list[RoutedHandler]]:
    """Builds every spec and returns receipt class name -> its handlers, in config order.

    Classes without handlers are absent. Handler names must be unique (set `name` to use one
    plugin twice). On any error the handlers built so far are closed and PluginError raised,
    or StartupUnavailable for a handler whose service did not answer yet (temporary).
    `targets` maps a `use` to an object already at hand (the testing kit's way in): it is
    built like the object that `use` would name.
    """
    routes: dict[str, list[RoutedHandler]] = {}
    built: list[RoutedHandler] = []
    try:
        for spec in specs:
            given = (targets or {}).get(spec.use)
            _add(spec, _resolve(spec.use) if given is None else (given, _default_name(given)),
                 built, routes)
    except (PluginError, StartupUnavailable):
        close_handlers({"": built})
        raise
    return routes


def _default_name(target: object) -> str:
    return str(getattr(target, "__name__", None) or type(target).__name__)


def _add(spec: HandlerSpec, resolved: tuple[object, str], built: list[RoutedHandler],
         routes: dict[str, list[RoutedHandler]]) -> None:
    """Builds one spec into `built` (first, so a later error still closes it) and `routes`."""
    target, default_name = resolved
    raw = _instantiate(spec, target)
    name = spec.name or _own_name(raw) or default_name
    built.append(RoutedHandler(raw, name, spec.policy.over(own_policy(raw))))
    problems = built[-1].policy.problems(f"handler '{name}'")
    if problems:
        raise PluginError("; ".join(problems))
    try:
        declared = normalise_types(spec.types if spec.types is not None
                                   else getattr(raw, "types", None), f"handler '{name}'")
        classes = receipt_classes(raw, declared, name)
    except HandlerTypeError as exc:
        raise PluginError(str(exc)) from exc
    if any(other.name == name for other in built[:-1]):
        raise PluginError(f"handler name '{name}' is used twice; give each use of "
                          f"'{spec.use}' its own `name`")
    for cls_name in classes:
        routes.setdefault(cls_name, []).append(built[-1])


def close_handlers(routes: Mapping[str, Sequence[object]]) -> None:
    """Calls `close()` once on every handler that has one; a crash there is logged, not raised.

    Shutdown must go on even if one plugin fails to clean up (as Dramatiq treats its hooks).
    """
    seen: set[int] = set()
    for handlers in routes.values():
        for obj in handlers:
            # two renamed uses of one instance share it: close it once
            target = obj.target if isinstance(obj, RoutedHandler) else obj
            if id(target) in seen:
                continue
            seen.add(id(target))
            close = getattr(target, "close", None)
            if not callable(close):
                continue
            try:
                close()
            except Exception:  # a plugin's cleanup must never stop shutdown
                log.exception("handler_close_failed",
                              handler=obj.name if isinstance(obj, RoutedHandler) else
                              _own_name(obj) or type(obj).__name__)


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
    except HandlerTypeError as exc:  # an @handler whose types its annotation refuses
        raise PluginError(f"{exc} (module '{module_name}')") from exc
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
        except StartupUnavailable as exc:  # temporary (a cluster not answering): not a mistake
            raise StartupUnavailable(f"handler '{spec.use}': {exc}") from None
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


def _own_name(obj: object) -> str | None:
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) and name else None


def deadline_problems(routes: Mapping[str, Sequence[RoutedHandler]], max_in_flight_s: float,
                      ) -> list[str]:
    """A handler whose own `deadline_s` is not below `ack.max_in_flight_s` could run, within
    its deadline, past the time its message may be held (the worker recycles then)."""
    seen = {b.name: b.policy.deadline_s for handlers in routes.values() for b in handlers}
    return [f"handler {name!r}: deadline_s ({deadline!r}) must be below ack.max_in_flight_s "
            f"({max_in_flight_s!r}): a call within its deadline would outlive the time its "
            f"message may be held"
            for name, deadline in seen.items() if deadline and deadline >= max_in_flight_s]


def handler_dispatcher(routes: Mapping[str, Sequence[RoutedHandler]], settings: Settings,
                       stuck_gauge: GaugeLike | None = None) -> Dispatcher:
    """The dispatcher of the configured handlers: the global deadline, pool size and retry
    backoff from `settings` (`worker.*`, `ack.*`), under each handler's own policy."""
    ack = settings.ack
    return Dispatcher(routes, settings.worker.handler_deadline_s,
                      max_workers=settings.worker.handler_threads, stuck_gauge=stuck_gauge,
                      stuck_share=settings.worker.stuck_recycle_share,
                      retry=RetryPolicy(ack.retry_base_s, ack.retry_max_s, ack.max_dequeue_count))
