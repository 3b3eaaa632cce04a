"""``tests.workers.setup_fails:Model``: imports fine, its per-worker set-up raises."""

from __future__ import annotations

import snakeden


class Model:
    def setup(self) -> None:
        raise RuntimeError("set-up failed on purpose")

    @snakeden.command
    def never(self) -> None:
        pass
