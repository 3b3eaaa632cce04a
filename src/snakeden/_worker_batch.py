"""A worker's BATCH loops: one tight loop per chunk of a ``map`` (docs/protocol.md section 6.2).

Each item runs exactly once, in order, and gets its own outcome. These loops are the worker's
share of a ``map``'s cost per item, so they avoid what a single call can afford: a result of a
plain type cannot be awaitable (``inspect.isawaitable`` costs more than an ``echo`` command), and
the FLAT form (one positional argument per item, results as a plain array when every item
succeeded) builds no ``[ok, value]`` pair per item.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

_PLAIN_TYPES = frozenset({type(None), bool, int, float, str, bytes, list, dict, tuple})

Await = Callable[[Any], Any]
ErrorBody = Callable[[BaseException], dict[str, Any]]


def run_batch(
    fn: Callable[..., Any], batch: Any, kwargs: Any, awaited: Await, error: ErrorBody
) -> list[Any]:
    """``[[ok, value_or_error], ...]``, one per args array of ``batch``."""
    results: list[Any] = []
    append = results.append
    isawaitable = inspect.isawaitable
    plain = _PLAIN_TYPES
    i = 0
    while i < len(batch):
        try:
            for args in batch[i:] if i else batch:
                value = fn(*args, **kwargs) if kwargs else fn(*args)
                if type(value) not in plain and isawaitable(value):
                    value = awaited(value)
                append([True, value])
                i += 1
        except BaseException as exc:
            append([False, error(exc)])
            i += 1
    return results


def run_flat(
    fn: Callable[..., Any], values: list[Any], kwargs: Any, awaited: Await, error: ErrorBody
) -> tuple[bool, list[Any]]:
    """``(True, [value, ...])`` when every item succeeded (the FLAT reply), else ``(False,
    [[ok, value_or_error], ...])`` as :func:`run_batch` answers."""
    if inspect.iscoroutinefunction(fn):
        pairs = run_batch(fn, [[v] for v in values], kwargs, awaited, error)
        if all(ok for ok, _ in pairs):
            return True, [value for _, value in pairs]
        return False, pairs
    out: list[Any] = []
    append = out.append
    try:
        if kwargs:
            for v in values:
                append(fn(v, **kwargs))
        else:
            for v in values:
                append(fn(v))
    except BaseException as exc:
        done = len(out)
        pairs = [[True, v] for v in _awaited_all(out, awaited)]
        pairs.append([False, error(exc)])
        rest = [[v] for v in values[done + 1 :]]
        return False, pairs + run_batch(fn, rest, kwargs, awaited, error)
    return True, _awaited_all(out, awaited)


def _awaited_all(out: list[Any], awaited: Await) -> list[Any]:
    # set(map(type, ...)) runs in C: the common case (plain results) costs no Python loop.
    if set(map(type, out)) <= _PLAIN_TYPES:
        return out
    isawaitable = inspect.isawaitable
    return [awaited(v) if isawaitable(v) else v for v in out]
