"""Commands that raise, for tests/test_exceptions.py. Module-level functions, so both a pool
serving this module and a ProcessPoolExecutor (by pickle) can run them."""

from __future__ import annotations

import asyncio
import errno
import importlib
import sys
import threading
from typing import Any

import snakeden


class AppError(Exception):
    """A user exception the host can import (the tests import this module)."""


class CodedError(Exception):
    """A constructor whose signature is not its ``args``: pickle cannot rebuild it."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class LockedError(Exception):
    """Carries an attribute neither pickle nor MessagePack can send."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@snakeden.command
def divide(a: Any, b: Any) -> Any:
    return a / b


@snakeden.command
def lookup(key: Any) -> Any:
    return {}[key]


@snakeden.command
def open_missing(path: str) -> None:
    open(path)  # noqa: SIM115  # raises FileNotFoundError, an OSError with errno and filename


@snakeden.command
def raise_oserror(code: int) -> None:
    raise OSError(code, "made up", "/some/path")


@snakeden.command
def app_error(message: str) -> None:
    raise AppError(message)


@snakeden.command
def coded_error(code: int, detail: str) -> None:
    raise CodedError(code, detail)


@snakeden.command
def locked_error(message: str) -> None:
    raise LockedError(message)


@snakeden.command
def local_error(message: str) -> None:
    class LocalError(Exception):
        pass

    raise LocalError(message)


@snakeden.command
def worker_only_error(message: str) -> None:
    """Raises a class from a module only the worker imports."""
    hidden = importlib.import_module("tests.workers.errors_hidden")
    raise hidden.HiddenError(message)


@snakeden.command
def exit_with(code: Any = None) -> None:
    sys.exit(code)


@snakeden.command
async def async_exit_with(code: Any) -> None:
    await asyncio.sleep(0)
    sys.exit(code)


@snakeden.command
def interrupt() -> None:
    raise KeyboardInterrupt


@snakeden.command
def invert(x: Any) -> Any:
    """1/x: fails for 0 only, for map tests."""
    return 1 / x


@snakeden.command
def describe(*args: Any, **kwargs: Any) -> Any:
    """What arrived, types included: the args as a list of (type name, value) and the kwargs."""
    return [[type(a).__name__, a] for a in args], {k: type(v).__name__ for k, v in kwargs.items()}


@snakeden.command
def echo(value: Any) -> Any:
    return value


@snakeden.command
def errno_of(name: str) -> int:
    return int(getattr(errno, name))
