"""The webhook's file pollers (TLS files, --static DIR) share one loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable


async def poll(check: Callable[[], object], seconds: float, log: logging.Logger,
               what: str) -> None:
    """Call `check` every `seconds` until cancelled. A failing check is logged and the next
    one runs: a reload bug must never stop the poller, or serving the last good state."""
    while True:
        await asyncio.sleep(seconds)
        try:
            check()
        except Exception:
            log.exception("%s failed", what)
