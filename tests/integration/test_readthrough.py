"""The read-through's two rules: never a list older than the request; coalesced, bounded."""

from __future__ import annotations

import asyncio

import pytest

from changegate.webhook import readthrough
from changegate.webhook.readthrough import ReadThrough


class Lister:
    """A fake API: each list returns the state as it is when the list *begins*."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.state = 0
        self.calls = 0
        self.fail = False

    async def __call__(self, namespace: str, timeout: float):  # type: ignore[no-untyped-def]
        self.calls += 1
        seen = self.state
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("API down")
        return (seen,)


async def test_a_request_arriving_during_a_list_waits_for_the_next_one():
    lister = Lister()
    rt = ReadThrough(lister, min_interval=0)
    first = asyncio.ensure_future(rt("payments", 1.0))
    await asyncio.sleep(0.01)  # the first list has begun (it saw state 0)...
    lister.state = 1  # ...then the approval is created, then the second request arrives
    second = await rt("payments", 1.0)
    assert await first == (0,)
    assert second == (1,)  # not the running list's stale answer
    await rt.close()


async def test_a_storm_shares_a_list_or_two():
    lister = Lister()
    rt = ReadThrough(lister, min_interval=0)
    answers = await asyncio.gather(*(rt("payments", 1.0) for _ in range(50)))
    assert all(a == (0,) for a in answers)
    assert lister.calls == 1
    more = await asyncio.gather(*(rt("payments", 1.0) for _ in range(30)),
                                *(rt("shipping", 1.0) for _ in range(30)))
    assert all(a is not None for a in more)
    assert lister.calls == 3  # one per namespace (a finished list is never reused)
    late = asyncio.ensure_future(rt("payments", 1.0))
    await asyncio.sleep(0.01)  # sent
    assert await asyncio.gather(late, *(rt("payments", 1.0) for _ in range(20)))
    assert lister.calls == 5  # the one in flight, and one after it for the late-comers
    await rt.close()


async def test_a_namespace_is_listed_at_most_once_per_interval():
    """A CI job retrying a denied apply in a loop must not become a LIST loop."""
    lister = Lister(delay=0.01)
    rt = ReadThrough(lister, min_interval=0.3)
    assert await rt("payments", 1.0) == (0,)
    lister.state = 1
    assert await asyncio.gather(*(rt("payments", 1.0) for _ in range(10))) == [None] * 10
    assert await rt("shipping", 1.0) == (1,)  # another namespace has its own interval
    assert lister.calls == 2
    await asyncio.sleep(0.3)
    assert await rt("payments", 1.0) == (1,)
    assert lister.calls == 3
    await rt.close()


async def test_refuses_says_beforehand_what_a_call_would_do():
    """The webhook skips the call when refuses() is True: it must never be True for a call
    that would have listed, or a just-created approval would be missed."""
    lister = Lister(delay=0.01)
    rt = ReadThrough(lister, min_interval=0.3)
    assert not rt.refuses("payments")  # never listed
    pending = asyncio.ensure_future(rt("payments", 1.0))
    await asyncio.sleep(0)  # the list is started, not yet sent
    assert not rt.refuses("payments")
    assert await rt("payments", 1.0) == (0,)  # it joined that list
    assert await pending == (0,)
    assert rt.refuses("payments")  # listed a moment ago
    assert await rt("payments", 1.0) is None
    assert not rt.refuses("shipping")
    await asyncio.sleep(0.3)
    assert not rt.refuses("payments")
    assert await rt("payments", 1.0) == (0,)
    assert lister.calls == 2
    await rt.close()


async def test_failures_and_timeouts_give_no_answer_and_the_next_request_works():
    lister = Lister()
    rt = ReadThrough(lister, min_interval=0)
    lister.fail = True
    assert await rt("payments", 1.0) is None
    lister.fail = False
    lister.delay = 0.5
    assert await rt("payments", 0.05) is None  # out of time: the denial stands
    lister.delay = 0.01
    await asyncio.sleep(0.6)
    assert await rt("payments", 1.0) == (0,)
    await rt.close()


async def test_no_new_wait_begins_while_the_queue_is_full(monkeypatch):
    monkeypatch.setattr(readthrough, "QUEUE", 5)
    lister = Lister(delay=0.2)
    rt = ReadThrough(lister, min_interval=0)
    answers = await asyncio.gather(*(rt(f"ns-{i}", 1.0) for i in range(8)),
                                   _refuses_when_full(rt))
    assert sum(a is None for a in answers[:8]) == 3
    assert lister.calls == 5
    await rt.close()


@pytest.mark.parametrize("queued", [False, True])
async def test_close_cancels_what_is_running(queued):
    lister = Lister(delay=10)
    rt = ReadThrough(lister, min_interval=0)
    waiter = asyncio.ensure_future(rt("payments", 20))
    await asyncio.sleep(0.01)
    others = []
    if queued:
        others.append(asyncio.ensure_future(rt("payments", 20)))
        await asyncio.sleep(0.01)
    await rt.close()
    assert await waiter is None
    assert [await o for o in others] == [None] * len(others)


async def _refuses_when_full(rt: ReadThrough) -> None:
    await asyncio.sleep(0.05)  # five wait, the queue is full
    assert rt.refuses("ns-new")
