"""The handshake's verdict: is a worker's first frame a HELLO this pool can work with?

Pure: a frame in, the worker's record filled in or a :class:`WorkerStartError` out
(docs/protocol.md section 6.1). The supervisor does the waiting and the killing.
"""

from __future__ import annotations

from snakeden._errors import WorkerStartError
from snakeden._handle import WorkerHandle
from snakeden._output import tail_text
from snakeden._protocol import (
    FEATURE_FLAT,
    FEATURE_TRACE,
    PROTOCOL_VERSION,
    Frame,
    Kind,
    decode_body,
)


def check_hello(w: WorkerHandle, frame: Frame, serializer: str) -> tuple[str, ...]:
    """Refuse a first frame that is not an acceptable HELLO (``WorkerStartError`` naming what is
    wrong and what to do), else note what it says on ``w`` and return its ``features``."""
    try:
        body = decode_body(frame) if not frame.flags else None
    except Exception as exc:
        raise WorkerStartError(
            f"worker {w.id} (pid {w.pid}) sent a first frame whose body is not MessagePack "
            f"({exc}); is it a snakeden worker?" + tail_text(w.stderr_tail(20)),
            {w.id: "bad handshake"},
        ) from None
    if frame.kind == Kind.ERROR and isinstance(body, dict):
        tb = str(body.get("traceback") or body.get("message"))
        raise WorkerStartError(
            f"worker {w.id} (pid {w.pid}) failed to start: "
            f"{body.get('type')}: {body.get('message')}\n--- worker traceback ---\n{tb}",
            {w.id: tb},
        )
    if frame.kind != Kind.HELLO or not isinstance(body, dict):
        raise WorkerStartError(
            f"worker {w.id} (pid {w.pid}) sent a frame of kind {frame.kind} (flags "
            f"{frame.flags}) instead of HELLO; is it a snakeden worker?",
            {w.id: "bad handshake"},
        )
    version = body.get("protocol")
    if version != PROTOCOL_VERSION:
        raise WorkerStartError(
            f"worker {w.id} speaks protocol {version}, this host speaks {PROTOCOL_VERSION}; "
            f"install the same snakeden version in the worker's environment",
            {w.id: f"protocol {version}"},
        )
    # Checked here, once, rather than as an undecodable call later. No "codecs": MessagePack
    # only (docs/protocol.md section 6.1).
    codecs = body.get("codecs")
    if serializer == "pickle" and not (isinstance(codecs, list) and "pickle" in codecs):
        raise WorkerStartError(
            f"worker {w.id} (pid {w.pid}, {body.get('runtime', 'unknown runtime')}) does "
            f"not offer the pickle serializer; use serializer='msgpack' or a Python worker",
            {w.id: f"codecs {codecs!r}: no pickle"},
        )
    w.commands = tuple(body.get("commands") or ())
    listed = body.get("features")
    features = tuple(f for f in listed if isinstance(f, str)) if isinstance(listed, list) else ()
    w.takes_context = FEATURE_TRACE in features
    w.features = features
    concurrency = body.get("concurrency", 1)
    if type(concurrency) is not int or concurrency < 1:
        raise WorkerStartError(
            f"worker {w.id} (pid {w.pid}) sent HELLO concurrency {concurrency!r}; it must be "
            f"an int >= 1",
            {w.id: "bad handshake"},
        )
    w.depth = concurrency  # Checkout.ready() raises it to the pool's pipeline depth
    w.takes_flat = FEATURE_FLAT in features
    return features
