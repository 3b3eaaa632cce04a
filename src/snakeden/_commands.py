"""How a worker module declares its commands, and how a worker finds them.

A command is a function marked with :func:`command`, at module level or as a method of a class
named in the target (``"pkg.mod:Model"``); the class is instantiated once per worker and its
``setup()`` method, if any, runs before the worker says it is ready.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__snakeden_command__"


@overload
def command(fn: F, /) -> F: ...
@overload
def command(*, name: str | None = None) -> Callable[[F], F]: ...


def command(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Register a function (sync or ``async def``) or method as a worker command.

    Use bare (``@command``) or with a name (``@command(name="predict")``). Names may not
    contain ``:``, which is reserved for calls by reference (``module:qualname``).
    """

    def mark(f: F) -> F:
        cmd = name or f.__name__
        if ":" in cmd:
            raise ValueError(f"command name {cmd!r} may not contain ':'")
        setattr(f, _MARK, cmd)
        return f

    return mark(fn) if fn is not None else mark


def split_target(target: str) -> tuple[str, str | None]:
    """``"pkg.mod:Model"`` -> ``("pkg.mod", "Model")``; ``"pkg.mod"`` -> ``("pkg.mod", None)``."""
    module, _, attr = target.partition(":")
    if not module:
        raise ValueError(f"worker target {target!r} must name a module, e.g. 'my_pkg.worker'")
    return module, attr or None


def import_target(target: str) -> tuple[ModuleType, Any]:
    """Import the target's module (the expensive part, done once in a fork template)."""
    module_name, attr = split_target(target)
    module = importlib.import_module(module_name)
    obj = None
    if attr is not None:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    return module, obj


def instantiate(module: ModuleType, obj: Any) -> dict[str, Callable[..., Any]]:
    """Run per-worker set-up and return the command table.

    A class target is instantiated and its ``setup()`` called; an instance or module target is
    used as it is. Runs in the worker process itself, never in a template.
    """
    if obj is None:
        return _collect(vars(module).values())
    if inspect.isclass(obj):
        obj = obj()
    setup = getattr(obj, "setup", None)
    if callable(setup):
        result = setup()
        if inspect.isawaitable(result):
            raise TypeError("setup() must be a plain function; async setup is not supported yet")
    return _collect(getattr(obj, n) for n in dir(obj) if not n.startswith("__"))


def _collect(candidates: Any) -> dict[str, Callable[..., Any]]:
    table: dict[str, Callable[..., Any]] = {}
    for value in candidates:
        name = getattr(value, _MARK, None)
        if isinstance(name, str) and callable(value):
            table[name] = value
    return table


def resolve_reference(ref: str) -> Callable[..., Any]:
    """``"math:factorial"`` -> the function. Raises LookupError with a clear message."""
    module_name, _, qualname = ref.partition(":")
    if not module_name or not qualname:
        raise LookupError(f"{ref!r} is not a 'module:qualname' reference")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise LookupError(f"cannot resolve {ref!r} in the worker: {exc}") from exc
    if not callable(obj):
        raise LookupError(f"{ref!r} is not callable")
    return obj  # type: ignore[no-any-return]


def reference_of(fn: Callable[..., Any]) -> str:
    """The ``module:qualname`` by which a worker can import ``fn``; ValueError if it has none."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ValueError(
            f"{fn!r} cannot be called by reference: only importable module-level functions "
            f"(not lambdas, closures or nested functions) can be sent to a worker"
        )
    if module == "__main__":
        raise ValueError(
            f"{fn!r} is defined in __main__, which a worker cannot import; "
            f"move it to an importable module"
        )
    return f"{module}:{qualname}"
