"""Starts a native thread at import that no BLAS library owns (faulthandler's watchdog)."""

from __future__ import annotations

import faulthandler

import snakeden

faulthandler.dump_traceback_later(3600, exit=False)


@snakeden.command
def ping() -> str:
    return "pong"
