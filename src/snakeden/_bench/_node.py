"""The Node.js worker contender's launcher: the runtime in the repository's ``node/`` directory
serving :file:`workers_node.js`. Needs ``node`` on PATH and ``npm ci`` run in ``node/``."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Final

#: The repository's Node runtime (a source checkout: src/snakeden/_bench -> the repository root).
NODE_DIR: Final = Path(__file__).resolve().parents[3] / "node"
RUNTIME: Final = NODE_DIR / "bin" / "snakeden-worker.js"
WORKER_MODULE: Final = Path(__file__).with_name("workers_node.js")


def node_missing() -> str | None:
    """The Node floor's check: it needs ``node`` only."""
    return "node not found on PATH" if shutil.which("node") is None else None


def unavailable() -> str | None:
    """Why the Node worker cannot be measured here, or None if it can."""
    if shutil.which("node") is None:
        return "node not found on PATH"
    if not RUNTIME.is_file():
        return f"the Node runtime is not there ({RUNTIME}): a source checkout is needed"
    if not (NODE_DIR / "node_modules").is_dir():
        return "the Node runtime lacks its dependencies: run `cd node && npm ci`"
    return None


def command() -> list[str]:
    """The argv of one Node worker."""
    node = shutil.which("node")
    assert node is not None
    return [node, str(RUNTIME), str(WORKER_MODULE)]


@functools.cache
def version() -> str:
    proc = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return proc.stdout.strip() or "?"
