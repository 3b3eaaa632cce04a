"""An asyncio service whose model is loaded once per worker, in a class worker's ``setup()``.

Run: python examples/asyncio_service.py

A small TCP service answers one line of text with a sentiment label. The model lives in the
workers, loaded once each when the pool starts; the event loop only routes requests, so a slow
prediction never blocks it, and ``call_timeout`` bounds each one.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time

import snakeden

# Workers import this file as a module by its name: they run in its folder.
HERE = pathlib.Path(__file__).resolve()


class SentimentModel:
    """The worker: ``"asyncio_service:SentimentModel"``, one instance per worker process."""

    def setup(self) -> None:
        # Stands for loading weights from disk: done once per worker, never per request.
        t0 = time.perf_counter()
        self.weights = {"good": 1.0, "great": 2.0, "love": 2.0, "bad": -1.0, "awful": -2.0}
        self.loaded_in = time.perf_counter() - t0

    @snakeden.command
    def predict(self, text: str) -> dict[str, object]:
        score = sum(self.weights.get(word, 0.0) for word in text.lower().split())
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return {"label": label, "score": score, "worker": os.getpid()}


async def serve(pool: snakeden.Pool) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        text = (await reader.readline()).decode().strip()
        try:
            answer = await pool.call("predict", text)
            writer.write(f"{answer['label']} {answer['score']:+.1f}\n".encode())
        except snakeden.SnakedenError as exc:  # a timeout, a crashed worker, ...
            writer.write(f"error {type(exc).__name__}\n".encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def ask(port: int, text: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(text.encode() + b"\n")
    await writer.drain()
    answer = (await reader.readline()).decode().strip()
    writer.close()
    await writer.wait_closed()
    return answer


async def main() -> None:
    target = f"{HERE.stem}:SentimentModel"
    async with snakeden.Pool(target, size=2, cwd=str(HERE.parent), call_timeout=5) as pool:
        server = await serve(pool)
        port = server.sockets[0].getsockname()[1]
        texts = ["I love this", "awful, just bad", "it is a chair", "good and great"]
        answers = await asyncio.gather(*(ask(port, t) for t in texts))
        for text, answer in zip(texts, answers, strict=True):
            print(f"{text!r:>20} -> {answer}")
        server.close()
        await server.wait_closed()
        stats = pool.stats()
        print(f"{stats.calls_ok} predictions on {stats.workers} workers, model loaded once each")


if __name__ == "__main__":
    asyncio.run(main())
