"""A worker module whose import does: segfault."""

import snakeden
from tests.workers.faults import explode


@snakeden.command
def never() -> None:
    pass


explode("segfault")
