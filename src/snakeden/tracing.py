"""OpenTelemetry spans for pool calls (``pip install 'snakeden[otel]'``).

``snakeden.tracing.instrument(pool)``: one span per call; an uninstrumented pool pays nothing.
See docs/operations.md.
"""

from snakeden._tracing import instrument

__all__ = ["instrument"]
