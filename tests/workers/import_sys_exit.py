"""A worker module whose import does: sys_exit."""

import snakeden
from tests.workers.faults import explode


@snakeden.command
def never() -> None:
    pass


explode("sys_exit")
