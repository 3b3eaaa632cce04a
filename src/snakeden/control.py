"""A local control socket for a live view of a pool (``snakeden top SOCKET``).

``snakeden.control.serve(pool, "/run/me/pool.sock")``: opt-in, a Unix socket with mode 0600.
See docs/operations.md.
"""

from snakeden._control import ControlServer, request, serve

__all__ = ["ControlServer", "request", "serve"]
