"""The operator's plain-HTTP port: ``GET /healthz`` and ``GET /metrics``.

Healthy means kopf has run its startup (settings, ledger shards) and the operator loop
still runs: this handler is served by that same event loop, so an answer at all proves
the loop is not stuck. kopf's own ``--liveness`` endpoint would need a second port for
the metrics; one small aiohttp app keeps the chart's single ``metrics`` port.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from changegate.operator.metrics import OperatorMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def make_app(healthy: Callable[[], bool], metrics: OperatorMetrics) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        if healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="starting\n")

    async def exposition(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", exposition)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
