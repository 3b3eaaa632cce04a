"""map(..., progress=): a callback or a bar on a terminal, quiet elsewhere."""

from __future__ import annotations

import pytest

import snakeden
from snakeden import _progress
from tests.conftest import run

EX = "snakeden.examples"


@pytest.mark.parametrize("chunksize", [1, 7])
def test_sync_map_reports_every_item_to_a_callback(chunksize: int) -> None:
    seen: list[tuple[int, int]] = []
    with snakeden.SyncPool(EX, size=2) as pool:
        out = list(
            pool.map(
                "add", range(50), range(50), chunksize=chunksize, progress=lambda *a: seen.append(a)
            )
        )
    assert out == [2 * i for i in range(50)]
    dones = sorted(d for d, _ in seen)
    assert dones[-1] == 50 and all(t == 50 for _, t in seen)
    assert len(seen) == (50 if chunksize == 1 else 8)


@pytest.mark.parametrize("chunksize", [1, 7])
def test_async_map_reports_every_item_to_a_callback(chunksize: int) -> None:
    seen: list[tuple[int, int]] = []

    async def body() -> list[int]:
        async with snakeden.Pool(EX, size=2) as pool:
            return await pool.map(
                "echo", range(30), chunksize=chunksize, progress=lambda *a: seen.append(a)
            )

    assert run(body()) == list(range(30))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (30, 30)


def test_failed_items_count_as_done_and_the_error_still_raises() -> None:
    seen: list[tuple[int, int]] = []
    with snakeden.SyncPool(EX, size=1) as pool:
        it = pool.map("fail", ["a"], progress=lambda *a: seen.append(a))
        with pytest.raises(snakeden.RemoteError):
            list(it)
    assert seen == [(1, 1)]


def test_quiet_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with snakeden.SyncPool(EX, size=1) as pool:
        assert list(pool.map("echo", range(5), progress=True)) == list(range(5))
    assert capsys.readouterr().err == ""
    assert _progress.start(True, 10) is None


def test_rich_bar_shows_count_and_rate(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rich")
    monkeypatch.setattr(_progress, "_is_terminal", lambda: True)
    with snakeden.SyncPool(EX, size=1) as pool:
        assert list(pool.map("echo", range(20), chunksize=5, progress=True)) == list(range(20))
    err = capsys.readouterr().err
    assert "20/20" in err and "/s" in err


def test_plain_bar_without_rich(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rich(total: int, description: str) -> _progress.Tracker:
        raise ImportError("no rich")

    monkeypatch.setattr(_progress, "_is_terminal", lambda: True)
    monkeypatch.setattr(_progress, "_rich_tracker", no_rich)
    bar = _progress.start(True, 3)
    assert bar is not None
    for _ in range(3):
        bar.advance(1)
    bar.advance(1)  # after the end: ignored
    err = capsys.readouterr().err
    assert "3/3" in err and "ETA" in err and err.endswith("\n")
