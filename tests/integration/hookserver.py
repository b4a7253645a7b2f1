"""aiohttp's TestServer, for the webhook's low-level HTTPS server (`make_server`)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import BaseTestServer
from aiohttp.web import ServerRunner

from changegate.webhook.app import Webhook, make_server


class HookServer(BaseTestServer):
    def __init__(self, webhook: Webhook, **kwargs: Any) -> None:
        self._webhook = webhook
        super().__init__(**kwargs)

    async def _make_runner(self, **kwargs: Any) -> ServerRunner:
        return ServerRunner(make_server(self._webhook))
