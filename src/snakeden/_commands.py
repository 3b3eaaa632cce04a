"""How a worker module declares its commands, and how a worker finds them.

A command is a function marked with :func:`command`, at module level or as a method of a class
named in the target (``"pkg.mod:Model"``); the class is instantiated once per worker and its
``setup()`` method, if any, runs before the worker says it is ready.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import operator
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar, overload

from snakeden._errors import NotAReference

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


_concurrency = 1


def concurrency(n: int) -> None:
    """Declare, at the top level of a worker module, that its worker serves ``n`` calls at once.

    ``async def`` commands then run side by side on the worker's event loop and sync commands
    on ``n`` threads (for I/O-bound work, or free-threaded Python); the pool keeps up to ``n``
    calls in flight on each such worker. Without it a worker serves one call at a time.
    """
    global _concurrency
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"snakeden.concurrency() takes an int >= 1, not {n!r}")
    _concurrency = n


def declared_concurrency() -> int:
    return _concurrency


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


# --- calls by reference ------------------------------------------------------------------------
#
# A worker is another process: it can only run a function it can import by name. Module-level
# functions, classes, classmethods and builtins go as "module:qualname". With the pickle
# serializer, a bound method, a functools.partial or a callable object goes by value instead:
# pickled as the first argument of a call whose wire name ends in BY_VALUE, which the worker
# resolves to operator.call. operator.call is C code, so a TypeError from binding the arguments
# still ends its traceback in the worker's own frame and is reported as a BadCall.

BY_VALUE = " (pickled)"

#: The module name under which a worker runs the host's __main__ script, and under which the host
#: finds that script again when a result pickled in the worker names one of its classes.
SCRIPT_MODULE = "__snakeden_main__"

_running_host_script = False


class ByValue(str):
    """The wire name of a call whose callable travels pickled, as its first argument."""

    __slots__ = ()


def sendable(
    cmd: str | Callable[..., Any], args: Any, *, pickle: bool, batch: bool
) -> tuple[str | Callable[..., Any], Any]:
    """``(cmd, args)`` as they go to a worker; raises :class:`NotAReference` before anything is
    sent when ``cmd`` cannot reach it. A callable sent by value becomes a :class:`ByValue` name
    and the first argument of each call (of each item, for a batch). Idempotent."""
    if isinstance(cmd, str) or not callable(cmd) or _plain_reference(cmd) is not None:
        return cmd, args
    if not pickle:
        raise NotAReference(_refusal(cmd, pickle=False))
    problem = _by_value_problem(cmd)
    if problem is not None:
        raise NotAReference(problem)
    name = ByValue(_label(cmd) + BY_VALUE)
    if batch:
        return name, [(cmd, *item) for item in args]
    return name, (cmd, *args)


def by_value(cmd: str | Callable[..., Any], pickle: bool) -> bool:
    """Whether ``cmd`` goes pickled with each call (see :func:`sendable`), not by name."""
    return pickle and not isinstance(cmd, str) and callable(cmd) and _plain_reference(cmd) is None


def reference_of(fn: Callable[..., Any]) -> str:
    """The ``module:qualname`` by which a worker imports ``fn``; :class:`NotAReference` (also a
    ``TypeError`` and ``ValueError``) with what to do instead if there is none."""
    ref = _plain_reference(fn)
    if ref is None:
        raise NotAReference(_refusal(fn, pickle=False))
    return ref


def resolve_reference(ref: str) -> Callable[..., Any]:
    """``"math:factorial"`` -> the function. Raises LookupError with a clear message."""
    if ref.endswith(BY_VALUE):
        return operator.call
    # A qualname never holds ':', a script's path might.
    module_name, _, qualname = ref.rpartition(":")
    if not module_name or not qualname:
        raise LookupError(f"{ref!r} is not a 'module:qualname' reference")
    try:
        obj: Any = (
            _import_host_script(module_name)
            if _is_script_path(module_name)
            else importlib.import_module(module_name)
        )
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise LookupError(f"cannot resolve {ref!r} in the worker: {exc}") from exc
    if not callable(obj):
        raise LookupError(f"{ref!r} is not callable")
    return obj  # type: ignore[no-any-return]


def running_host_script() -> bool:
    """True while this worker runs the host's script to find a function in it."""
    return _running_host_script


def _plain_reference(fn: Any) -> str | None:
    """``module:qualname`` if a worker importing it gets ``fn`` itself back, else None."""
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, ModuleType | type):
        return None  # bound to an instance, which a name cannot carry
    module = getattr(fn, "__module__", None)
    if module is None:
        # Builtin classmethods (dict.fromkeys) and method descriptors (str.upper) have none.
        cls = owner if isinstance(owner, type) else getattr(fn, "__objclass__", None)
        module = getattr(cls, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    loaded = sys.modules.get(module)
    if loaded is not None and not _same(_walk(loaded, qualname), fn):
        return None  # the name leads elsewhere: replaced, or wrapped without functools.wraps
    if module == "__main__":
        where = _main_reference()
        return None if where is None else f"{where}:{qualname}"
    return f"{module}:{qualname}"


_MISSING = object()


def _walk(obj: Any, qualname: str) -> Any:
    for part in qualname.split("."):
        obj = getattr(obj, part, _MISSING)
    return obj


def _same(found: Any, fn: Any) -> bool:
    try:
        # Bound classmethods are made afresh on each attribute access: equal, not identical.
        return found is fn or bool(found == fn)
    except Exception:
        return False


def _main_reference() -> str | None:
    """How a worker finds the host's ``__main__``: the module name under ``python -m``, the
    script's path for ``python script.py``, None for ``-c``, a REPL or a notebook."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        name = getattr(spec, "name", "")
        # A package's __main__.py usually runs the program at import: never import it twice.
        if not name or name == "__main__" or name.endswith(".__main__"):
            return None
        return str(name)
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return None
    # Results pickled in the worker name the script's classes by SCRIPT_MODULE.
    sys.modules.setdefault(SCRIPT_MODULE, main)  # type: ignore[arg-type]
    return os.path.abspath(path)


def _is_script_path(module_name: str) -> bool:
    return module_name.endswith(".py") and os.path.isabs(module_name)


def _import_host_script(path: str) -> ModuleType:
    """Run the host's script as module SCRIPT_MODULE, once per worker, as ``multiprocessing``
    does with spawn: its ``if __name__ == "__main__":`` part does not run."""
    global _running_host_script
    loaded = sys.modules.get(SCRIPT_MODULE)
    if loaded is not None and getattr(loaded, "__file__", None) == path:
        return loaded
    spec = importlib.util.spec_from_file_location(SCRIPT_MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the host's script {path}")
    module = importlib.util.module_from_spec(spec)
    # The host ran it with its folder on sys.path: its sibling imports must work here too.
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.append(folder)
    sys.modules[SCRIPT_MODULE] = module
    _running_host_script = True
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(SCRIPT_MODULE, None)
        raise ImportError(
            f"running the host's script {path} in the worker raised {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        _running_host_script = False
    return module


def _by_value_problem(fn: Any) -> str | None:
    """Why pickle cannot send ``fn`` to a worker, for what can be seen without pickling it."""
    if isinstance(fn, functools.partial):
        if getattr(fn.func, "__module__", None) == "__main__":
            return (
                f"{_label(fn)} wraps {fn.func!r}, defined in the __main__ script: pickle sends "
                f"it by the name __main__, where a worker cannot find it. Move it to an "
                f"importable module, or call it by reference without functools.partial. "
                f"Nothing was sent"
            )
        if _plain_reference(fn.func) is not None:
            return None
        inner = _by_value_problem(fn.func)
        if inner is None:
            return None
        return f"{_label(fn)} wraps a function that cannot travel: {inner}"
    qualname = getattr(fn, "__qualname__", None)
    if isinstance(qualname, str) and "<" in qualname:
        return _refusal(fn, pickle=True)
    owner = getattr(fn, "__self__", None)
    holder = owner if owner is not None and not isinstance(owner, ModuleType | type) else fn
    cls = type(holder)
    if cls.__module__ == "__main__" or "<" in cls.__qualname__:
        where = "the __main__ script" if cls.__module__ == "__main__" else "a function"
        return (
            f"{_label(fn)} needs its {cls.__qualname__} object pickled, and that class is "
            f"defined in {where}, where a worker cannot find it to unpickle it. Move the class "
            f"to module level in an importable module. Nothing was sent"
        )
    return None


def _label(fn: Any) -> str:
    """A name for ``fn`` in messages and in a by-value call's wire name."""
    if isinstance(fn, functools.partial):
        return f"functools.partial({_label(fn.func)})"
    owner = getattr(fn, "__self__", None)
    qualname = getattr(fn, "__qualname__", None)
    if isinstance(qualname, str):
        module = getattr(fn, "__module__", None) or type(owner).__module__
        return f"{module}:{qualname}"
    cls = type(fn)
    return f"{cls.__module__}:{cls.__qualname__}.__call__"


def _refusal(fn: Any, *, pickle: bool) -> str:
    """What cannot be sent, why, and what to do instead."""
    qualname = getattr(fn, "__qualname__", None)
    module = getattr(fn, "__module__", None)
    owner = getattr(fn, "__self__", None)
    tail = "Nothing was sent"
    if isinstance(qualname, str) and "<lambda>" in qualname:
        return (
            f"{fn!r} cannot be sent to a worker: a lambda has no name by which the worker could "
            f"import it{'' if not pickle else ', and pickle sends functions by name'}. Define it "
            f"with def at module level in an importable module. {tail}"
        )
    if isinstance(qualname, str) and "<locals>" in qualname:
        return (
            f"{fn!r} cannot be sent to a worker: it is defined inside a function ({qualname}), "
            f"so the worker cannot import it by name (nested functions and closures cannot "
            f"travel{'' if not pickle else ', not even by pickle'}). Move it to module level in "
            f"an importable module and pass what it closed over as arguments. {tail}"
        )
    if not pickle and owner is not None and not isinstance(owner, ModuleType | type):
        return (
            f"{_label(fn)} is a method bound to an instance of {type(owner).__qualname__}, and "
            f"MessagePack cannot carry the object. Use serializer='pickle' (the object is then "
            f"pickled with every call: the worker works on a fresh copy each time, and changes "
            f"it makes stay in that copy), or keep the state in the worker with a class target "
            f"('module:Class', set up once per worker). {tail}"
        )
    if not pickle and isinstance(fn, functools.partial):
        return (
            f"{_label(fn)} cannot be sent with MessagePack, which carries data, not functions. "
            f"Use serializer='pickle', or call {_label(fn.func)} with all its arguments. {tail}"
        )
    if module == "__main__" and _main_reference() is None:
        return (
            f"{fn!r} is defined in __main__, and this __main__ (python -c, an interactive "
            f"session, a notebook, or a package's __main__.py) is not a file a worker can "
            f"import. Define it in an importable module. {tail}"
        )
    if isinstance(qualname, str) and isinstance(module, str):
        return (
            f"{fn!r} cannot be called by reference: {module}:{qualname} does not lead back to it "
            f"(was it replaced, or wrapped by a decorator without functools.wraps?). Pass a "
            f"function a worker can import under its own name. {tail}"
        )
    hint = "" if pickle else ", or create the pool with serializer='pickle' to send it pickled"
    return (
        f"{fn!r} has no module-level name by which a worker could import it. Pass a command "
        f"name or a module-level function{hint}. {tail}"
    )
