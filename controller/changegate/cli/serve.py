"""`changegate serve`: the admission webhook process.

HTTPS `POST /validate` on --port; plain HTTP `/metrics`, `/healthz`, `/readyz` on
--metrics-port. State from the API server (list+watch) or, with --static DIR, from files.
Every setting is checked before anything listens: a bad one is one line and exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from typing import Any

import click

from changegate import logs
from changegate.config import load_config
from changegate.webhook.tls import POLL_SECONDS, ReloadingCertificate

log = logging.getLogger("changegate.serve")

# In-flight reviews get this long to finish on SIGTERM (the deadline is 4 s); the chart's
# preStop sleep has already taken the replica out of the Service by then.
SHUTDOWN_SECONDS = 5.0


def _groups(values: tuple[str, ...]) -> tuple[str, ...] | None:
    """Repeatable and comma-separated: --policy-admin-groups a,b --policy-admin-groups c."""
    if not values:
        return None
    return tuple(g.strip() for v in values for g in v.split(",") if g.strip())


@click.command()
@click.option("--tls-cert", required=True, type=click.Path(dir_okay=False),
              help="Serving certificate (PEM, chain). Reloaded when the file changes.")
@click.option("--tls-key", required=True, type=click.Path(dir_okay=False),
              help="Private key of the serving certificate (PEM).")
@click.option("--client-ca", type=click.Path(dir_okay=False),
              help="Require a client certificate signed by this CA (PEM) on the HTTPS port: "
                   "for an API server that presents one to its webhooks [off].")
@click.option("--port", default=8443, show_default=True, type=click.IntRange(0, 65535),
              help="HTTPS port of POST /validate.")
@click.option("--metrics-port", default=8080, show_default=True,
              type=click.IntRange(0, 65535), help="Plain HTTP port of /metrics /healthz /readyz.")
@click.option("--address", default="0.0.0.0", show_default=True,  # noqa: S104 - a pod serves
              help="Address both ports listen on.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Process configuration YAML (docs/contracts.md).")
@click.option("--static", "static_dir", type=click.Path(file_okay=False),
              help="Serve state from DIR (trust.yaml, policy.yaml, ledger.yaml, objects) "
                   "instead of the API server.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False),
              help="kubeconfig (default: $KUBECONFIG, ~/.kube/config, else in-cluster).")
@click.option("--context", "kube_context", help="kubeconfig context.")
@click.option("--namespace", help="Controller namespace [$CHANGEGATE_NAMESPACE, "
                                  "$POD_NAMESPACE, else changegate].")
@click.option("--trust-config-map", help="Trust-store ConfigMap [changegate-trust].")
@click.option("--policy-config-map", help="Policy ConfigMap [changegate-policy].")
@click.option("--operator-service-account",
              help="The operator's username [system:serviceaccount:<ns>:changegate-operator].")
@click.option("--policy-admin-groups", multiple=True,
              help="Groups that may change the policy and trust store (repeatable, or a,b).")
@click.option("--break-glass-groups", multiple=True,
              help="Groups that may use break-glass (repeatable, or a,b).")
@click.option("--deadline-seconds", help="The webhook's own deadline [4].")
@click.option("--max-body-bytes", help="Largest AdmissionReview accepted [3145728].")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--tls-poll-seconds", default=POLL_SECONDS, type=click.FloatRange(0.05, 3600),
              hidden=True, help="How often the TLS files are checked for rotation.")
@click.option("--static-poll-seconds", default=2.0, type=click.FloatRange(0.05, 3600),
              hidden=True, help="How often --static DIR is checked for changes.")
def serve(tls_cert: str, tls_key: str, client_ca: str | None, port: int, metrics_port: int,
          address: str, config_path: str | None, static_dir: str | None, kubeconfig: str | None,
          kube_context: str | None, namespace: str | None, trust_config_map: str | None,
          policy_config_map: str | None, operator_service_account: str | None,
          policy_admin_groups: tuple[str, ...], break_glass_groups: tuple[str, ...],
          deadline_seconds: str | None, max_body_bytes: str | None, log_level: str,
          tls_poll_seconds: float, static_poll_seconds: float) -> None:
    """Run the admission webhook."""
    logs.setup(log_level)
    config = load_config(config_path, flags={
        "namespace": namespace, "trustConfigMap": trust_config_map,
        "policyConfigMap": policy_config_map, "operatorServiceAccount": operator_service_account,
        "policyAdminGroups": _groups(policy_admin_groups),
        "breakGlassGroups": _groups(break_glass_groups),
        "deadlineSeconds": deadline_seconds, "maxBodyBytes": max_body_bytes,
        "clientCa": client_ca})
    certificate = ReloadingCertificate(tls_cert, tls_key, poll_seconds=tls_poll_seconds,
                                       client_ca=config.client_ca)
    static = None
    if static_dir is not None:
        from changegate.webhook.cache import StaticSource

        # A directory that does not load stops us here, before anything listens.
        static = StaticSource(static_dir, config.process, poll_seconds=static_poll_seconds)
    asyncio.run(_serve(config, certificate, static, address=address, port=port,
                       metrics_port=metrics_port, kubeconfig=kubeconfig, context=kube_context))


async def _freeze_when_ready(source: Any) -> None:
    """Move everything alive once the state is loaded (modules, the trust store, every cached
    ChangeApproval) out of the cyclic GC's sight: full collections would otherwise walk
    millions of long-lived objects, a pause in some unlucky request. They are still freed by
    reference counting when the cache drops them."""
    while not source.ready:
        await asyncio.sleep(0.1)
    gc.collect()
    gc.freeze()
    log.info("state loaded", extra={"fields": {"frozenObjects": gc.get_freeze_count()}})


async def _serve(config: Any, certificate: ReloadingCertificate, static: Any, *, address: str,
                 port: int, metrics_port: int, kubeconfig: str | None,
                 context: str | None) -> None:
    from aiohttp import web

    from changegate.webhook.app import Webhook, make_app, make_metrics_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    background: list[asyncio.Task[Any]] = [asyncio.ensure_future(certificate.run())]
    cache = None
    if static is not None:
        source = static
        background.append(asyncio.ensure_future(static.run()))
        # SIGHUP: reload DIR now, without waiting for the poll (the demo, scripts).
        loop.add_signal_handler(signal.SIGHUP, lambda: static.check(force=True))
    else:
        from changegate import kube
        from changegate.webhook.cache import KubeCache

        cache = KubeCache(await kube.connect_async(kubeconfig, context), config.process)
        source = cache
    hook = Webhook(source, config)
    runners = [web.AppRunner(make_metrics_app(hook), access_log=None, handle_signals=False,
                             shutdown_timeout=1.0),
               web.AppRunner(make_app(hook), access_log=None, handle_signals=False,
                             shutdown_timeout=SHUTDOWN_SECONDS)]
    try:
        for runner in runners:
            await runner.setup()
        # Probes first: /healthz answers while the caches are still listing.
        await web.TCPSite(runners[0], address, metrics_port).start()
        if cache is not None:
            cache.start()
        await web.TCPSite(runners[1], address, port, ssl_context=certificate.context,
                          backlog=1024).start()
        background.append(asyncio.ensure_future(_freeze_when_ready(source)))
        log.info("serving", extra={"fields": {
            "port": port, "metricsPort": metrics_port, "address": address,
            "source": "static" if static is not None else "kubernetes",
            "namespace": config.process.namespace,
            "deadlineSeconds": config.deadline_seconds, "maxBodyBytes": config.max_body_bytes,
            "clientCertificateRequired": config.client_ca is not None}})
        await stop.wait()
        log.info("stopping")
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if cache is not None:
            await cache.stop()
