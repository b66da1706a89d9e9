"""Routing by receipt class: which receipt classes a handler gets.

A handler declares classes by name or class (`types`), or its receipt parameter's
annotation says (`SmsReport`, `SmsReport | IntlSmsReport`; `Receipt`, none, or anything
else: every class); declared types the annotation does not accept are a `HandlerTypeError`
naming both, raised by `@handler` where it is written and by the plugin loader at start-up
(`alicom-receipts check` reports it). Nothing here runs per receipt: the dispatcher routes
by the class names found once.
"""

from __future__ import annotations

import inspect
import re
import types as pytypes
import typing
from collections.abc import Callable, Iterable

from consumer.receipts import RECEIPT_CLASSES, Receipt

__all__ = ["HandlerTypeError", "annotated_classes", "normalise_types", "receipt_classes"]


class HandlerTypeError(TypeError):
    """A handler's declared types and its annotation disagree (or name unknown classes).

    A TypeError so that `@handler` refuses at import time like any misuse of a decorator;
    the plugin loader turns it into its one-line PluginError.
    """


def normalise_types(types: object, where: str) -> tuple[str, ...] | None:
    """Declared types as receipt class names (None stays None); HandlerTypeError if unknown.

    A lone name or class means that one class, not its letters.
    """
    if types is None:
        return None
    if isinstance(types, str | type):
        types = (types,)
    if not isinstance(types, Iterable):
        raise HandlerTypeError(f"{where}: types must be a list of receipt classes")
    names = tuple(t.__name__ if isinstance(t, type) else str(t) for t in types)
    unknown = [n for n in names if n not in RECEIPT_CLASSES]
    if unknown or not names:
        raise HandlerTypeError(f"{where}: unknown or no receipt types {unknown} "
                               f"(known: {', '.join(RECEIPT_CLASSES)})")
    return names


def receipt_classes(obj: object, declared: tuple[str, ...] | None, label: str,
                    ) -> tuple[str, ...]:
    """The receipt class names a handler gets: `declared`, else its annotation's, else all.

    Raises HandlerTypeError, one line naming both, when `declared` lists a class the
    annotation of its receipt parameter does not accept.
    """
    annotated = annotated_classes(obj)
    if declared is None:
        return annotated if annotated is not None else tuple(RECEIPT_CLASSES)
    if annotated is not None:
        refused = [name for name in declared if name not in annotated]
        if refused:
            raise HandlerTypeError(
                f"handler '{label}': declared types {', '.join(declared)} do not match its "
                f"annotation {' | '.join(annotated)} (it would get {', '.join(refused)}); "
                f"declare types={list(annotated)} or widen the annotation")
    return declared


def annotated_classes(obj: object) -> tuple[str, ...] | None:
    """The receipt classes a handler's receipt parameter is annotated with; None: any.

    The parameter of a function, of `handle`, or the item type of `handle_batch`'s
    sequence. A `Receipt`, a missing or a non-receipt annotation means any class.
    """
    func, batch = _receipt_callable(obj)
    if func is None:
        return None
    try:
        params = [p for p in inspect.signature(func).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read
        return None
    if not params or params[0].annotation is inspect.Parameter.empty:
        return None
    try:
        hint: object = typing.get_type_hints(func).get(params[0].name)
    except Exception:  # noqa: BLE001 - a forward reference only a type checker resolves
        hint = params[0].annotation
    if batch:
        args = typing.get_args(hint)
        hint = args[0] if args and not isinstance(hint, str) else hint
    return _classes_of(hint)


def _receipt_callable(obj: object) -> tuple[Callable[..., object] | None, bool]:
    """The callable whose first parameter is the receipt, and whether it takes a batch.

    `handle_batch` wins, as in the dispatcher (`is_batch_handler`), whatever else the object
    carries. Then a callable `__wrapped__`: an @handler function's (its `handle` only
    forwards, annotated with any Receipt) or a functools.wraps wrapper's, the user's own
    function. Then `handle`, then the object itself."""
    method = getattr(obj, "handle_batch", None)
    if callable(method):
        return method, True
    for attr in ("__wrapped__", "handle"):
        method = getattr(obj, attr, None)
        if callable(method):
            return method, False
    return (obj, False) if callable(obj) else (None, False)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _classes_of(hint: object) -> tuple[str, ...] | None:
    """Receipt class names of a hint; a string (unresolved) hint is read by its names."""
    if isinstance(hint, str):
        names = [n for n in _NAME.findall(hint) if n in RECEIPT_CLASSES or n == "Receipt"]
        return None if not names or "Receipt" in names else tuple(dict.fromkeys(names))
    members = (typing.get_args(hint)
               if typing.get_origin(hint) in (typing.Union, pytypes.UnionType) else (hint,))
    found: list[str] = []
    for member in members:
        if member is type(None):
            continue
        if not (isinstance(member, type) and issubclass(member, Receipt)) or member is Receipt:
            return None
        found.append(member.__name__)
    return tuple(found) or None
