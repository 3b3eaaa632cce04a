"""Functions and classes for the drop-in tests (tests/test_dropin.py), importable by workers."""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any


class Box:
    """A picklable object that supports weak references (a list or a dict does not)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def make_box(value: Any) -> Box:
    return Box(value)


def unbox(box: Box) -> Any:
    return box.value


def fail_with(box: Box) -> None:
    raise ValueError(f"failed with {box.value!r}")


class Tally:
    """State that travels with a bound method under serializer='pickle'."""

    def __init__(self, total: int = 0) -> None:
        self.total = total

    def add(self, x: int) -> int:
        self.total += x
        return self.total

    def __call__(self, x: int) -> int:
        return self.total * x

    @classmethod
    def named(cls) -> str:
        return cls.__qualname__


def write_after(path: str, text: str, seconds: float) -> int:
    """Slow work that leaves a trace: what a program exiting without shutdown must not lose."""
    time.sleep(seconds)  # the work itself, not a synchronisation
    pathlib.Path(path).write_text(text)
    return os.getpid()


def pid() -> int:
    return os.getpid()
