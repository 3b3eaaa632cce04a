"""A worker module whose import does: exception."""

import snakeden
from tests.workers.faults import explode


@snakeden.command
def never() -> None:
    pass


explode("exception")
