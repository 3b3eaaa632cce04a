"""The channel's verdict on a lost request: could the worker have run it? Real pipes, no process:
the test plays the worker's end itself, so each case is exact."""

from __future__ import annotations

import array
import asyncio
import os
import threading

import pytest

from snakeden import _channel, _shm
from snakeden._channel import Channel, ChannelLost, TakenBack
from snakeden._protocol import (
    SKIPPED,
    Frame,
    Kind,
    ProtocolViolation,
    encode_body,
    encode_frame,
    error_body,
)


def _pair() -> tuple[Channel, int, int]:
    """A host channel and the worker's ends (read requests, write replies)."""
    w2h_r, w2h_w = os.pipe()
    h2w_r, h2w_w = os.pipe()
    return Channel(w2h_r, h2w_w, 1 << 20), h2w_r, w2h_w


def _slot(value: int) -> memoryview:
    return memoryview(array.array("I", [value])).cast("B").cast("I")


@pytest.mark.parametrize(
    ("worker_reads", "begun", "unsent"),
    [
        (False, None, True),  # still in the pipe: never read whole
        (True, None, False),  # read, and no slot to say more: it may have run
        (True, 0, True),  # read in its last instant, but never begun: the slot says so
        (True, "ident", False),  # begun: it may have run
    ],
)
def test_async_verdict_after_the_worker_dies(
    worker_reads: bool, begun: object, unsent: bool
) -> None:
    async def body() -> None:
        channel, wr, ww = _pair()
        channel.attach(asyncio.get_running_loop(), lambda lost: None)
        ident = channel.next_id()
        if begun is not None:
            channel.begun = _slot(ident if begun == "ident" else 0)
        fut = channel.expect(ident)
        channel.send(encode_frame(Kind.CALL, ident, b"\x93\xa4echo\x90\x80"), ident)
        if worker_reads:
            assert os.read(wr, 1 << 16)
        os.close(wr)
        os.close(ww)  # the worker is gone: end of file on the reply pipe
        with pytest.raises(ChannelLost) as info:
            await asyncio.wait_for(fut, 30)
        assert info.value.unsent is unsent
        channel.close()
        os.close(channel.read_fd)
        os.close(channel.write_fd)

    asyncio.run(body())


@pytest.mark.parametrize(
    ("worker_reads", "begun", "unsent"),
    [(False, None, True), (True, None, False), (True, 0, True), (True, "ident", False)],
)
def test_blocking_verdict_after_the_worker_dies(
    worker_reads: bool, begun: object, unsent: bool
) -> None:
    channel, wr, ww = _pair()
    ident = channel.next_id()
    if begun is not None:
        channel.begun = _slot(ident if begun == "ident" else 0)
    data = encode_frame(Kind.CALL, ident, b"\x93\xa4echo\x90\x80")
    channel.write_blocking(data, None)
    if worker_reads:
        assert os.read(wr, 1 << 16) == data
    os.close(wr)
    os.close(ww)
    with pytest.raises(ChannelLost) as info:
        channel.read_reply_blocking(ident, None)
    assert info.value.unsent is unsent
    os.close(channel.read_fd)
    os.close(channel.write_fd)


def test_pipelined_calls_after_the_one_begun_never_ran() -> None:
    async def body() -> None:
        channel, wr, ww = _pair()
        channel.attach(asyncio.get_running_loop(), lambda lost: None)
        ids = [channel.next_id() for _ in range(3)]
        futs = [channel.expect(i) for i in ids]
        for i in ids:
            channel.send(encode_frame(Kind.CALL, i, b"\x93\xa4echo\x90\x80"), i)
        channel.begun = _slot(ids[1])
        await asyncio.sleep(0)  # pipelined sends go out together, at the loop's next turn
        assert len(os.read(wr, 1 << 16)) == 3 * len(
            encode_frame(Kind.CALL, 1, b"\x93\xa4echo\x90\x80")
        )
        os.close(wr)
        os.close(ww)
        verdicts = []
        for f in futs:
            with pytest.raises(ChannelLost) as info:
                await asyncio.wait_for(f, 30)
            verdicts.append(info.value.unsent)
        assert verdicts == [False, False, True]
        channel.close()
        os.close(channel.read_fd)
        os.close(channel.write_fd)

    asyncio.run(body())


@pytest.mark.parametrize("trailing", ["eof", "child_holds_the_pipe"])
def test_reply_written_before_death_reaches_its_caller(trailing: str) -> None:
    """The exit notice can come before the loop reads the pipe (one loop turn holds both): a
    reply the worker wrote before it died is read on close, and only the call it never answered
    fails. (The likely cause of a kill storm's one unexplained failure, "a call failed on a
    worker killed while idle": that worker had answered and was waiting for the next call.)"""

    async def body() -> None:
        channel, wr, ww = _pair()
        channel.attach(asyncio.get_running_loop(), lambda lost: None)
        answered, unanswered = channel.next_id(), channel.next_id()
        fut_answered = channel.expect(answered)
        fut_unanswered = channel.expect(unanswered)
        os.write(ww, encode_frame(Kind.RESULT, answered, b"\xa2ok"))
        held = None if trailing == "eof" else os.dup(ww)  # a grandchild keeps the end open
        os.close(ww)
        channel.close()  # before the loop ran the reader: the supervisor's exit path
        assert fut_answered.result().body == b"\xa2ok"
        with pytest.raises(ChannelLost):
            fut_unanswered.result()
        if held is not None:
            os.close(held)
        os.close(wr)
        os.close(channel.read_fd)
        os.close(channel.write_fd)

    asyncio.run(body())


@pytest.mark.parametrize(("begun", "unsent"), [(0, True), ("ident", False)])
def test_a_stream_read_by_a_worker_that_died_before_beginning_it_never_ran(
    begun: object, unsent: bool
) -> None:
    """A worker killed while blocked reading can still take the request off the pipe before it
    dies (the kernel finishes the read, then the signal ends it): the begun slot, not the
    pipe, tells whether it began. Streams get the same verdict as calls."""

    async def body() -> None:
        channel, wr, ww = _pair()
        channel.attach(asyncio.get_running_loop(), lambda lost: None)
        ident = channel.next_id()
        channel.begun = _slot(ident if begun == "ident" else 0)
        got: list[object] = []
        channel.expect_stream(ident, got.append)
        channel.send(encode_frame(Kind.CALL, ident, b"\x93\xa5items\x90\x80"), ident)
        assert os.read(wr, 1 << 16)
        os.close(wr)
        os.close(ww)
        channel.close()
        assert len(got) == 1 and isinstance(got[0], ChannelLost)
        assert got[0].unsent is unsent
        os.close(channel.read_fd)
        os.close(channel.write_fd)

    asyncio.run(body())


def _frame_ids(fd: int) -> list[int]:
    """The ids of the CALL frames the host wrote (the worker's end reads them)."""
    data = os.read(fd, 1 << 16)
    ids = []
    while data:
        n = int.from_bytes(data[:4], "big")
        ids.append(int.from_bytes(data[6:10], "big"))
        data = data[4 + n :]
    return ids


def _attached() -> tuple[Channel, int, int]:
    """:func:`_pair`, attached to the running loop, with a begun slot of its own (a Python
    worker's, whose ids the test sets itself)."""
    channel, wr, ww = _pair()
    channel.attach(asyncio.get_running_loop(), lambda lost: None)
    channel.begun = memoryview(array.array("I", [0] * _shm.SLOT_WORDS)).cast("B").cast("I")
    return channel, wr, ww


def _call(channel: Channel, *, takeable: bool) -> tuple[int, asyncio.Future[Frame]]:
    ident = channel.next_id()
    fut = channel.expect(ident)
    channel.send(encode_frame(Kind.CALL, ident, b"\x93\xa4echo\x90\x80"), ident, takeable=takeable)
    return ident, fut


def test_take_back_takes_the_oldest_call_not_begun_and_notes_it_for_the_worker() -> None:
    async def body() -> None:
        channel, wr, ww = _attached()
        first, running = _call(channel, takeable=False)
        second, behind = _call(channel, takeable=True)
        third, last = _call(channel, takeable=True)
        await asyncio.sleep(0)  # a yield: the calls behind the first go out in one write
        assert _frame_ids(wr) == [first, second, third]
        channel.begun[0] = first
        assert channel.take_back()
        with pytest.raises(TakenBack):
            await behind
        assert (channel.begun[1], channel.begun[2]) == (1, second)  # the worker will skip it
        channel.begun[0] = third  # the worker began the last one: nothing left to take
        assert not channel.take_back()
        assert not last.done() and not running.done()
        os.write(ww, encode_frame(Kind.RESULT, first, b"\xc0"))
        os.write(ww, encode_frame(Kind.RESULT, third, b"\xc0"))
        assert (await running).id == first and (await last).id == third
        channel.close()
        for fd in (wr, ww, channel.read_fd, channel.write_fd):
            os.close(fd)

    asyncio.run(body())


@pytest.mark.parametrize("skipped", [True, False])
def test_take_back_racing_the_worker_lets_its_answer_decide(
    skipped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker begins the call between the host's note and its second look (held open here by
    the fence): the host cannot tell whether the worker saw the note, so the call stays; the
    worker's answer says. SKIPPED: it never ran, and its caller sends it again; a result: it
    ran, and is the caller's as usual."""

    async def body() -> None:
        channel, wr, ww = _attached()
        slot = channel.begun
        assert slot is not None
        first, running = _call(channel, takeable=False)
        second, behind = _call(channel, takeable=True)
        slot[0] = first

        def worker_begins_it() -> None:
            slot[0] = second

        monkeypatch.setattr(_channel, "fence", worker_begins_it)
        assert not channel.take_back()
        assert not channel.take_back()  # asked once: not again
        os.write(ww, encode_frame(Kind.RESULT, first, b"\xc0"))
        if skipped:
            body = error_body(kind="cancelled", type_name="", message=SKIPPED)
            os.write(ww, encode_frame(Kind.ERROR, second, encode_body(body, 0)))
            with pytest.raises(TakenBack):
                await behind
        else:
            os.write(ww, encode_frame(Kind.RESULT, second, b"\xc0"))
            assert (await behind).id == second
        assert (await running).id == first
        channel.close()
        for fd in (wr, ww, channel.read_fd, channel.write_fd):
            os.close(fd)

    asyncio.run(body())


def test_a_write_that_finds_the_worker_gone_first_reads_the_replies_it_left() -> None:
    """Pipelining: a call goes out while others are in flight, and the write fails because the
    worker died. The reply it wrote before dying is its caller's; only the call it had begun
    is lost, and the new one never reached it."""

    async def body() -> None:
        channel, wr, ww = _attached()
        first, answered = _call(channel, takeable=False)
        second, running = _call(channel, takeable=True)
        await asyncio.sleep(0)  # a yield: the second goes out
        assert _frame_ids(wr) == [first, second]
        os.write(ww, encode_frame(Kind.RESULT, first, b"\xc0"))
        channel.begun[0] = second
        os.close(wr)  # the worker is gone: writing to it fails (EPIPE)
        _third, unsent = _call(channel, takeable=True)
        assert (await answered).id == first
        with pytest.raises(ChannelLost) as info:
            await running
        assert not info.value.unsent
        with pytest.raises(ChannelLost) as info:
            await unsent
        assert info.value.unsent
        channel.close()
        for fd in (ww, channel.read_fd, channel.write_fd):
            os.close(fd)

    asyncio.run(body())


def test_a_reply_read_with_garbage_behind_it_is_its_callers() -> None:
    """One read brings a reply and then garbage (the worker answered one call and broke the
    protocol in the next): the first call has its result; the one in flight behind it is lost
    with the framing."""

    async def body() -> None:
        channel, wr, ww = _pair()
        channel.attach(asyncio.get_running_loop(), lambda lost: None)
        first, answered = _call(channel, takeable=False)
        _second, broken = _call(channel, takeable=True)
        os.write(ww, encode_frame(Kind.RESULT, first, b"\xc0") + b"\x00\x00\x00\x01Z")
        assert (await answered).id == first
        with pytest.raises(ChannelLost) as info:
            await broken
        assert isinstance(info.value.cause, ProtocolViolation)
        channel.close()
        for fd in (wr, ww, channel.read_fd, channel.write_fd):
            os.close(fd)

    asyncio.run(body())


def test_blocking_a_reply_read_with_garbage_is_returned_and_the_next_request_never_sent() -> None:
    channel, wr, ww = _pair()
    ident = channel.next_id()

    def worker() -> None:  # reads the request, answers it and writes garbage in one go
        assert os.read(wr, 1 << 16)
        os.write(ww, encode_frame(Kind.RESULT, ident, b"\xc0") + b"\x7f\xff\xff\xff")

    t = threading.Thread(target=worker)
    t.start()
    assert (
        channel.request_blocking(ident, encode_frame(Kind.CALL, ident, b"\x90"), None).id == ident
    )
    t.join()
    with pytest.raises(ChannelLost) as info:
        channel.request_blocking(channel.next_id(), encode_frame(Kind.CALL, 2, b"\x90"), None)
    assert info.value.unsent and isinstance(info.value.cause, ProtocolViolation)
    assert not channel.unread()  # nothing more was written
    for fd in (wr, ww, channel.read_fd, channel.write_fd):
        os.close(fd)
