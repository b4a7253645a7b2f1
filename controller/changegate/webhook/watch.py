"""One list+watch loop per resource, through the Kubernetes seam (client-go's reflector, small).

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
from dataclasses import dataclass
from typing import Any

from changegate.kube import ApiError, AsyncKube

log = logging.getLogger("changegate.webhook.cache")

PAGE = 500  # items per list page: bounded memory per response, few round trips
LIST_TIMEOUT = 60.0
# The API server ends a watch after timeout_seconds; client-go picks 5-10 min at random.
WATCH_MIN_SECONDS, WATCH_MAX_SECONDS = 300, 600
BACKOFF_BASE, BACKOFF_CAP = 0.5, 30.0
EVENTS = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")


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
    path: str  # the collection's REST path, e.g. /api/v1/namespaces
    # Applied to each item as its page arrives, so a 10,000-object list never sits in memory
    # as raw dicts (a page of PAGE does); None drops the item.
    convert: Callable[[dict[str, Any]], Any] = lambda obj: obj
    on_list: Callable[[list[Any]], None] = lambda items: None
    on_event: Callable[[str, dict[str, Any]], None] = lambda kind, obj: None


class FeedRunner:
    """Runs one Feed forever; `listed` turns True at the first complete list."""

    def __init__(self, api: AsyncKube, feed: Feed, *, on_synced: Callable[[], None] = lambda: None,
                 watch_seconds: tuple[int, int] = (WATCH_MIN_SECONDS, WATCH_MAX_SECONDS)):
        self.api = api
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
        items: list[Any] = []
        convert = self.feed.convert
        token: str | None = None
        while True:
            query = {"limit": str(PAGE), **({"continue": token} if token else {})}
            try:
                data = (await self.api.call("GET", self.feed.path, query=query,
                                            timeout=LIST_TIMEOUT)).body
            except ApiError as exc:
                if exc.status == 410:
                    raise Gone(f"list continue token expired ({self.feed.name})") from exc
                raise
            if not isinstance(data, dict):
                raise FeedError(f"list {self.feed.name}: not a list: {str(data)[:200]}")
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
        query = {"resourceVersion": self.resource_version or "",
                 "allowWatchBookmarks": "true", "timeoutSeconds": str(seconds)}
        try:
            async for event in self.api.watch(self.feed.path, query, timeout=seconds + 30):
                kind = event.get("type")
                obj = event.get("object")
                if not isinstance(obj, dict) or kind not in EVENTS:
                    raise FeedError(f"watch {self.feed.name}: unexpected {str(event)[:200]}")
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(str(obj.get("message") or "Expired"))
                    raise FeedError(f"watch {self.feed.name}: {obj.get('message') or obj}")
                if kind == "BOOKMARK":
                    self.bookmarks += 1
                else:
                    self.feed.on_event(kind, obj)
                delivered = True
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    self.resource_version = str(version)
        except ApiError as exc:
            if exc.status == 410:
                raise Gone(str(exc)) from exc
            raise
        # A server that ends every watch at once, empty, must not make this loop spin.
        return delivered or loop.time() - began > 1.0
