"""A worker's BATCH loops: one tight loop per chunk of a ``map`` (docs/protocol.md section 6.2).

Each item runs exactly once, in order, and gets its own outcome. These loops are the worker's
share of a ``map``'s cost per item, so they avoid what a single call can afford: a result of a
plain type cannot be awaitable (``inspect.isawaitable`` costs more than an ``echo`` command), and
the FLAT form (one positional argument per item, results as a plain array when every item
succeeded) builds no ``[ok, value]`` pair per item and calls the function from C
(``list.extend(map(fn, values))``, as ``multiprocessing.Pool``'s ``mapstar`` does).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from snakeden._protocol import encode_body

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
    """``(True, [value, ...])`` when every item succeeded (the FLAT reply, to be encoded with
    :func:`encode_flat`), else ``(False, [[ok, value_or_error], ...])`` as :func:`run_batch`
    answers."""
    if inspect.iscoroutinefunction(fn):
        pairs = run_batch(fn, [[v] for v in values], kwargs, awaited, error)
        if all(ok for ok, _ in pairs):
            return True, [value for _, value in pairs]
        return False, pairs
    out: list[Any] = []
    try:
        # extend(map()) loops in C and keeps what it appended before an exception (CPython's
        # list.extend; test_failed_items_fail_alone_and_the_first_raises checks it): the item
        # that raised is values[len(out)].
        if kwargs:
            out.extend(map(functools.partial(fn, **kwargs), values))
        else:
            out.extend(map(fn, values))
    except BaseException as exc:
        done = len(out)
        pairs = [[True, v] for v in _awaited_all(out, awaited)]
        pairs.append([False, error(exc)])
        rest = [[v] for v in values[done + 1 :]]
        return False, pairs + run_batch(fn, rest, kwargs, awaited, error)
    return True, out  # awaited, if need be, by encode_flat


def _awaited_all(out: list[Any], awaited: Await) -> list[Any]:
    isawaitable = inspect.isawaitable
    return [awaited(v) if isawaitable(v) else v for v in out]


def encode_flat(out: list[Any], flags: int, awaited: Await) -> bytes:
    """The body of a FLAT reply: ``out`` encoded, with any awaitable in it awaited first.

    A sync command may return an awaitable, which the reply carries as its value. Looking for
    one costs a ``type()`` per item, half an ``echo``'s cost; the encoder refuses an awaitable
    anyway, so the check runs only when encoding fails."""
    try:
        return encode_body(out, flags)
    except Exception:
        if not any(map(inspect.isawaitable, out)):
            raise
    return encode_body(_awaited_all(out, awaited), flags)
