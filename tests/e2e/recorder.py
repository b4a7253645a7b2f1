"""A validating webhook that allows everything and records every AdmissionReview it gets.

Test-only: it shows what the real API server sends. It runs its own event loop in a thread
because the tests drive kubectl synchronously: a blocking subprocess call on the server's own
loop would deadlock the API server's callback.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from typing import Any

from aiohttp import web


class Recorder:
    def __init__(self, cert: str, key: str) -> None:
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(cert, key)
        self.reviews: list[dict[str, Any]] = []  # appended from the server thread only
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-recorder", daemon=True)

    def url(self, path: str = "/validate") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Recorder:
        # Bind here, in the caller's thread, so the port is known before the thread runs and
        # no other process can take it in between.
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("recorder did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _review(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.reviews.append(review)
        return web.json_response({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": review["request"]["uid"], "allowed": True},
        })

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/validate", self._review)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.SockSite(runner, self._sock, ssl_context=self._ssl)
        self._loop.run_until_complete(site.start())
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._cleanup(runner))
            self._loop.close()

    @staticmethod
    async def _cleanup(runner: web.AppRunner) -> None:
        await runner.cleanup()
        # Closing a TLS connection is itself asynchronous (close_notify both ways); let the
        # API server's keep-alive connections finish closing before the loop goes away, or
        # their sockets are reported as unclosed (an error under pytest's warning filter).
        await asyncio.sleep(0.2)
