"""One operator run: kopf's settings, login, startup, the handlers, and the health port."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from changegate import kube
from changegate.operator import (
    approvals,
    canary,
    changes,
    drift,
    ledger,
    retention,
    targets,
    world,
)
from changegate.operator.api import Api, ApiError, object_path
from changegate.operator.context import Context
from changegate.operator.health import make_app, serve
from changegate.operator.record import Record

LOG = logging.getLogger("changegate.operator")
DEFAULT_PEERING = "changegate"
FINALIZER = "changegate.io/operator"
# Kopf stores its own state in annotations under this prefix, which the digest ignores
# (SPEC §3). The handlers here need none of it (see targets.py), but any future
# on.create/update handler would, and must never write a key the digest counts.
STORAGE_PREFIX = "changegate.io"
# The record (record.py) is written in batches this often: a burst of events (the listing
# at start) costs one patch per shard, and a change is in the API within a second.
FLUSH_SECONDS = 0.5


def configure(settings: kopf.OperatorSettings, *, peering: str, standalone: bool) -> None:
    # One active replica. With peering, a second replica stays a standby (kopf pauses it
    # while the first keeps its peering record fresh, 60 s lifetime) and takes over when
    # the first goes; mandatory, so a missing peering object stops the operator rather
    # than letting two replicas write at once.
    settings.peering.name = peering
    settings.peering.standalone = standalone
    settings.peering.mandatory = not standalone
    settings.peering.clusterwide = True
    # Events only where the handlers ask (kopf.info/warn); handler logs stay in the log.
    settings.posting.enabled = True
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "changegate-operator"
    # Watches: the API server ends each watch after 5 min (its own default is a random
    # 30-60 min, longer than many load balancers keep an idle stream), the client gives
    # up 10 s after that. Bookmarks arrive every 60 s and the API server keeps events
    # for 75 s, so kopf's 70 s inactivity timeout reconnects before any are lost.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 310
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = 70
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=STORAGE_PREFIX, touch_key="kopf-touch", v1=False)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STORAGE_PREFIX, key="kopf-last-handled-configuration", v1=False)


async def connection_info(kubeconfig: str | None) -> kopf.ConnectionInfo:
    """Kopf's credentials from the same configuration kube.py reads (kubeconfig or
    in-cluster), the way kopf's own login_via_async_client extracts them."""
    client = await kube.async_client(kubeconfig)
    try:
        config = client.configuration
        header = await config.get_api_key_with_prefix("BearerToken", alias="authorization")
        parts = header.split(" ", 1) if header else []
        scheme, token = ((None, None) if not parts else (None, parts[0]) if len(parts) == 1
                         else (parts[0], parts[1]))
        return kopf.ConnectionInfo(
            server=config.host, ca_path=config.ssl_ca_cert, insecure=not config.verify_ssl,
            username=config.username or None, password=config.password or None,
            scheme=scheme, token=token, certificate_path=config.cert_file,
            private_key_path=config.key_file)
    finally:
        await client.close()


def build_registry(ctx: Context, *, peering: str = DEFAULT_PEERING,
                   standalone: bool = False) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return await connection_info(ctx.kubeconfig)

    background: list[asyncio.Task[None]] = []

    @kopf.on.startup(id="startup", registry=registry)
    async def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        configure(settings, peering=peering, standalone=standalone)
        if ctx.client is None:
            ctx.client = Api(await kube.async_client(ctx.kubeconfig))
        # The webhook reads the ledger; it must exist before the first change lands.
        await ledger.ensure(ctx.api, ctx.process.namespace, ctx.clock())
        version = await ctx.api.request("GET", "/version")
        ctx.server_version = str((version or {}).get("gitVersion") or "")
        # Before kopf lists anything: every object listed is compared with the record.
        ctx.record = Record(ctx.process.namespace)
        await ctx.record.load(ctx.api)
        if ctx.expected_webhooks is not None:  # a deleted configuration sends no event
            drift.judge(ctx, await ctx.api.get(
                f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/"
                f"{drift.NAME}"))
        # kopf's indices are live views: the ones handed to startup stay current.
        background.append(asyncio.create_task(
            keep_record(ctx, world.World(ctx.process, kwargs)), name="changegate record"))

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if ctx.record is not None and ctx.client is not None:
            try:
                await ctx.record.flush(ctx.api)
            except ApiError as exc:  # what is not written is compared again at the next start
                LOG.warning("record not flushed at exit: %s", exc)
        if ctx.client is not None:
            await ctx.client.close()
            ctx.client = None

    world.register(registry, ctx.process)
    approvals.register(registry, ctx)
    targets.register(registry, ctx)
    canary.register(registry, ctx)
    if ctx.expected_webhooks is not None:
        def is_ours(name: str, **_: Any) -> bool:
            return name == drift.NAME

        @kopf.on.event("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
                       id="webhook-drift", when=is_ours, registry=registry)
        async def webhook_changed(type: str | None, body: kopf.Body, **_: Any) -> None:
            drift.judge(ctx, None if type == "DELETED" else body)
    return registry


async def keep_record(ctx: Context, view: world.World) -> None:
    """Write the record in batches; every resync, delete what approvalRetention lets go
    and try again the transitions that still owe a review that could not be created."""
    assert ctx.record is not None
    since_retry = 0.0
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        try:
            if ctx.record.dirty:
                await ctx.record.flush(ctx.api)
            since_retry += FLUSH_SECONDS
            if since_retry >= ctx.resync:
                since_retry = 0.0
                await retention.sweep(ctx, view)
                for kind, namespace, name in list(ctx.retry):
                    api_version = "apps/v1" if kind == "Deployment" else "v1"
                    live = await ctx.api.get(object_path(api_version, kind, namespace, name))
                    await changes.observe(ctx, view, "DELETED" if live is None else None,
                                          live or {"metadata": {"namespace": namespace,
                                                                "name": name}}, kind, LOG)
        except ApiError as exc:
            LOG.warning("record: %s (tried again)", exc)
        except Exception:  # this loop must outlive any one failure: it flushes the record
            LOG.exception("record loop: unexpected error (carrying on)")


async def run(ctx: Context, *, peering: str = DEFAULT_PEERING, standalone: bool = False,
              metrics_host: str = "0.0.0.0", metrics_port: int = 8080,  # noqa: S104 -- a pod
              stop_flag: asyncio.Event | None = None) -> None:
    """Run until stopped (SIGTERM/SIGINT when in the main thread, or ``stop_flag``)."""
    registry = build_registry(ctx, peering=peering, standalone=standalone)
    ready = asyncio.Event()
    task = asyncio.current_task()
    runner = await serve(make_app(lambda: ready.is_set() and not (task and task.cancelling()),
                                  ctx.metrics), metrics_host, metrics_port)
    LOG.info("operator starting: controller namespace %s, %s", ctx.process.namespace,
             "standalone" if standalone else f"peering {peering!r}")
    try:
        await kopf.operator(registry=registry, clusterwide=True, standalone=standalone,
                            peering_name=None if standalone else peering,
                            ready_flag=ready, stop_flag=stop_flag)
    finally:
        await runner.cleanup()
