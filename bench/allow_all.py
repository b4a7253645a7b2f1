"""The baseline of both benches: what any Python webhook must do at least.

    python bench/allow_all.py --port P --metrics-port M --cert F --key F

aiohttp's web.Application over TLS, `POST /validate` answering allowed for the review's
uid, and `GET /readyz` on a plain HTTP port. Nothing else: no decision, no log line, no
metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

import orjson
from aiohttp import web


async def validate(request: web.Request) -> web.Response:
    review = orjson.loads(await request.read())
    return web.Response(body=orjson.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": True}}),
        content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(port: int, metrics_port: int, cert: str, key: str) -> None:
    app = web.Application(client_max_size=3 * 1024 * 1024)
    app.router.add_post("/validate", validate)
    probes = web.Application()
    probes.router.add_get("/readyz", readyz)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    runners = [web.AppRunner(app, access_log=None), web.AppRunner(probes, access_log=None)]
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], "127.0.0.1", port, ssl_context=context, backlog=1024).start()
    await web.TCPSite(runners[1], "127.0.0.1", metrics_port).start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.metrics_port, args.cert, args.key))


if __name__ == "__main__":
    main()
