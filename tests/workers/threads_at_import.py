"""Starts a Python thread at import: unsafe to fork from."""

import threading

import snakeden

_stop = threading.Event()
threading.Thread(target=_stop.wait, name="import-time-thread", daemon=True).start()


@snakeden.command
def ping() -> str:
    return "pong"
