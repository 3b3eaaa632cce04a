"""A worker module whose import does: hang."""

import snakeden
from tests.workers.faults import explode


@snakeden.command
def never() -> None:
    pass


explode("hang")
