"""The bounded read-through (DESIGN.md): one namespace's ChangeApprovals listed from the API
for a denial that an approval created a moment ago, not yet seen by the watch, might turn.

Two rules make it safe and cheap:
- Fresh: a request only ever uses a list sent after it arrived. A list already sent may
  have been answered before the approval existed, so a request that finds one in flight
  waits for the next, which is sent when the running one ends.
- Coalesced and bounded: per namespace at most one list runs and one is queued, shared by
  every request waiting for it; a namespace is listed at most once per MIN_INTERVAL (a
  request after a list sent a moment ago gets none: an approval that new is the watch's
  to bring, within that moment); and no new wait begins while QUEUE requests already
  wait. So a storm of denials (a CI job retrying, say) costs the API server about one
  list per namespace per MIN_INTERVAL, not one per request, nor one per list latency. A
  read-through that fails, runs out of time or is not taken is simply no second chance:
  the denial stands.

The same machinery, typed by what it fetches, looks up a namespace the cache has not seen
yet (one GET within the deadline, SPEC §5): the namespace of a request is a key here,
never a value, and what it finds is the API server's state, used for that decision only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from changegate.core.snapshot import ApprovalObject

log = logging.getLogger("changegate.webhook.cache")

Approvals = tuple[ApprovalObject, ...]
T = TypeVar("T")
QUEUE = 64  # requests waiting for a read-through, over all namespaces
MIN_INTERVAL = 0.5  # seconds between two lists of one namespace


@dataclass
class _Namespace(Generic[T]):
    running: asyncio.Future[T] | None = None
    sent: bool = False  # the running list's request has gone out (too old to join now)
    queued: asyncio.Future[T] | None = None
    last_sent: float = float("-inf")  # loop time the last list went out


class ReadThrough(Generic[T]):
    def __init__(self, lister: Callable[[str, float], Awaitable[T]], *,
                 list_timeout: float = 2.0, min_interval: float | None = None) -> None:
        self.lister = lister
        self.list_timeout = list_timeout
        self.min_interval = MIN_INTERVAL if min_interval is None else min_interval
        self.lists = 0
        self.waiting = 0
        self._namespaces: dict[str, _Namespace[T]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def refuses(self, namespace: str) -> bool:
        """True when a call now gives None at once: the queue is full, or the namespace was
        listed a moment ago and no list waits to go out. The call itself decides by this
        too; the webhook asks first, so a storm of denials skips the call, its coroutines
        and its deadline timer (~10 us a request)."""
        if self.waiting >= QUEUE:
            return True
        state = self._namespaces.get(namespace)
        if state is None or (state.running is not None and not state.sent):
            return False
        return asyncio.get_running_loop().time() - state.last_sent < self.min_interval

    async def __call__(self, namespace: str, timeout: float) -> T | None:
        if self.refuses(namespace):
            return None
        loop = asyncio.get_running_loop()
        state = self._namespaces.get(namespace)
        if state is None:
            self._forget_idle(loop.time())
            state = self._namespaces[namespace] = _Namespace[T]()
        if state.running is not None and not state.sent:
            future = state.running  # not asked yet: its answer is as fresh as we need
        elif state.running is None:
            state.running, state.sent = loop.create_future(), False
            self._start(namespace, state, state.running)
            future = state.running
        else:  # asked before we arrived: ours is the next one
            if state.queued is None:
                state.queued = loop.create_future()
            future = state.queued
        self.waiting += 1
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return None
        except asyncio.CancelledError:
            if future.cancelled():  # closed under us, not our caller cancelling
                return None
            raise
        except Exception as exc:  # noqa: BLE001 - no second chance, the denial stands
            log.info("read-through failed", extra={"fields": {"namespace": namespace,
                                                              "error": str(exc)[:200]}})
            return None
        finally:
            self.waiting -= 1

    def _start(self, namespace: str, state: _Namespace[T], future: asyncio.Future[T]) -> None:
        task = asyncio.ensure_future(self._run(namespace, state, future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, namespace: str, state: _Namespace[T], future: asyncio.Future[T]
                   ) -> None:
        self.lists += 1
        state.sent = True
        state.last_sent = asyncio.get_running_loop().time()
        try:
            result = await asyncio.wait_for(self.lister(namespace, self.list_timeout),
                                            self.list_timeout)
        except asyncio.CancelledError:  # closing: no next list
            future.cancel()
            if state.queued is not None:
                state.queued.cancel()
            state.running = state.queued = None
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every waiter
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved here: waiters may all have given up
        else:
            if not future.done():
                future.set_result(result)
        if state.queued is not None:  # the next list begins now, after its waiters came
            state.running, state.queued, state.sent = state.queued, None, False
            self._start(namespace, state, state.running)
        else:
            state.running = None  # kept until MIN_INTERVAL has passed: see _forget_idle

    def _forget_idle(self, now: float) -> None:
        if len(self._namespaces) < 1024:
            return
        for name, state in list(self._namespaces.items()):
            if state.running is None and now - state.last_sent >= self.min_interval:
                del self._namespaces[name]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
