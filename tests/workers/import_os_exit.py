"""A worker module whose import does: os_exit."""

import snakeden
from tests.workers.faults import explode


@snakeden.command
def never() -> None:
    pass


explode("os_exit")
