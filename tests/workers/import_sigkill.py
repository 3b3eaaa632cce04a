"""A worker module whose import does: sigkill."""

import snakeden
from tests.workers.faults import explode


@snakeden.command
def never() -> None:
    pass


explode("sigkill")
