"""One list+watch loop per resource, through `kubernetes.aio` (client-go's reflector, small).

- List (paged, raw JSON parsed with orjson: the generated models would cost more than the
  decision itself), then watch from the list's resourceVersion with bookmarks on.
- The watch is re-opened from the last resourceVersion seen (event or bookmark) when the
  server ends it (timeout_seconds, randomised like client-go so replicas do not reconnect
  in step) or the connection drops; 410 Gone (that version was compacted away) relists.
- Errors back off exponentially with jitter (0.5 s doubling to 30 s), reset by success.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from kubernetes.aio.client.exceptions import ApiException
from kubernetes.aio.watch import Watch

log = logging.getLogger("changegate.webhook.cache")

PAGE = 500  # items per list page: bounded memory per response, few round trips
LIST_TIMEOUT = 60.0
# The API server ends a watch after timeout_seconds; client-go picks 5-10 min at random.
WATCH_MIN_SECONDS, WATCH_MAX_SECONDS = 300, 600
BACKOFF_BASE, BACKOFF_CAP = 0.5, 30.0


class Gone(Exception):
    """410: the resourceVersion (or a list continue token) is too old; relist."""


class FeedError(Exception):
    """The API answered something other than what a list or watch returns."""


def backoff(attempt: int) -> float:
    """Exponential with jitter in [50 %, 100 %] of the step, so replicas spread out."""
    step = min(BACKOFF_CAP, BACKOFF_BASE * float(2 ** min(attempt, 16)))
    return step * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not cryptography


@dataclass
class Feed:
    """What to list and watch, and where the results go (the cache's stores)."""

    name: str
    method: Callable[..., Any]  # a bound list_* method of a kubernetes.aio API class
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Applied to each item as its page arrives, so a 10,000-object list never sits in memory
    # as raw dicts (a page of PAGE does); None drops the item.
    convert: Callable[[dict[str, Any]], Any] = lambda obj: obj
    on_list: Callable[[list[Any]], None] = lambda items: None
    on_event: Callable[[str, dict[str, Any]], None] = lambda kind, obj: None


class FeedRunner:
    """Runs one Feed forever; `listed` turns True at the first complete list."""

    def __init__(self, feed: Feed, *, on_synced: Callable[[], None] = lambda: None,
                 watch_seconds: tuple[int, int] = (WATCH_MIN_SECONDS, WATCH_MAX_SECONDS)):
        self.feed = feed
        self.on_synced = on_synced
        self.watch_seconds = watch_seconds
        self.listed = False
        self.resource_version: str | None = None
        self.last_error = ""
        self.lists = self.watches = self.gone = self.errors = self.bookmarks = 0

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                if self.resource_version is None:
                    items, version = await self.list()
                    self.feed.on_list(items)
                    self.resource_version = version
                    self.lists += 1
                    if not self.listed:
                        self.listed = True
                        self.on_synced()
                    attempt = 0
                if await self.watch():
                    attempt = 0
                else:
                    await asyncio.sleep(backoff(attempt))
                    attempt += 1
            except asyncio.CancelledError:
                raise
            except Gone as exc:
                self.gone += 1
                log.info("resourceVersion expired, relisting",
                         extra={"fields": {"feed": self.feed.name, "error": str(exc)}})
                self.resource_version = None
            except Exception as exc:  # noqa: BLE001 - network, auth, server: back off, retry
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                delay = backoff(attempt)
                attempt += 1
                log.warning("list/watch failed, retrying",
                            extra={"fields": {"feed": self.feed.name, "error": self.last_error,
                                              "retryIn": round(delay, 2)}})
                await asyncio.sleep(delay)

    async def list(self) -> tuple[list[Any], str]:
        raw = _raw(self.feed.method)
        items: list[Any] = []
        convert = self.feed.convert
        token: str | None = None
        while True:
            extra: dict[str, Any] = {"_continue": token} if token else {}
            response = await raw(*self.feed.args, limit=PAGE, _request_timeout=LIST_TIMEOUT,
                                 **extra, **self.feed.kwargs)
            try:
                body = await response.read()
                status = response.status
            finally:
                response.release()
            if status == 410:
                raise Gone(f"list continue token expired ({self.feed.name})")
            if status != 200:
                raise FeedError(f"list {self.feed.name}: HTTP {status}: {_message(body)}")
            data = orjson.loads(body)
            del body
            for obj in data.get("items") or ():
                item = convert(obj)
                if item is not None:
                    items.append(item)
            meta = data.get("metadata") or {}
            token = meta.get("continue") or None
            if token is None:
                return items, str(meta.get("resourceVersion") or "")

    async def watch(self) -> bool:
        """Watch from self.resource_version until the server ends it. True if it was healthy
        (ended normally or delivered something), so the backoff resets."""
        seconds = random.randint(*self.watch_seconds)  # noqa: S311 - spreading, not secrets
        loop = asyncio.get_running_loop()
        began = loop.time()
        delivered = False
        self.watches += 1
        # return_type "object": keep events as plain dicts, no model classes.
        async with Watch(return_type="object") as watch:  # type: ignore[no-untyped-call]
            stream = watch.stream(
                self.feed.method, *self.feed.args, resource_version=self.resource_version,
                allow_watch_bookmarks=True, timeout_seconds=seconds,
                _request_timeout=seconds + 30, **self.feed.kwargs)
            try:
                async for event in stream:
                    if not isinstance(event, dict) or "type" not in event:
                        raise FeedError(f"watch {self.feed.name}: unexpected {str(event)[:200]}")
                    kind = event["type"]
                    if kind == "BOOKMARK":
                        self.bookmarks += 1
                    elif kind in ("ADDED", "MODIFIED", "DELETED"):
                        self.feed.on_event(kind, event["raw_object"])
                    delivered = True
                    if watch.resource_version:
                        self.resource_version = str(watch.resource_version)
            except ApiException as exc:
                if exc.status == 410:
                    raise Gone(str(exc.reason)) from exc
                raise
        # A server that ends every watch at once, empty, must not make this loop spin.
        return delivered or loop.time() - began > 1.0


def _raw(method: Callable[..., Any]) -> Callable[..., Any]:
    """The `*_without_preload_content` twin of a generated API method: raw aiohttp response."""
    owner = getattr(method, "__self__", None)
    raw = getattr(owner, f"{method.__name__}_without_preload_content", None)
    if raw is None:
        raise TypeError(f"{method!r} has no _without_preload_content variant")
    return raw  # type: ignore[no-any-return]


def _message(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(doc, dict):
        return str(doc.get("message") or doc.get("reason") or "")[:200]
    return str(doc)[:200]
