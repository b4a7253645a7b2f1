"""`changegate operator`: the kopf operator that records what happened (SPEC §7a)."""

from __future__ import annotations

import asyncio
import logging

import click

from changegate.core.errors import ChangeGateError


@click.command(name="operator")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Process configuration (docs/contracts.md); also CHANGEGATE_* env.")
@click.option("--namespace", default=None,
              help="Controller namespace: trust store, policy, ledger (default: from "
                   "--config, $POD_NAMESPACE, else changegate).")
@click.option("--kubeconfig", default=None, help="Kubeconfig file (default: $KUBECONFIG, "
                                                 "~/.kube/config, else in-cluster).")
@click.option("--metrics-port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Plain-HTTP port for /healthz and /metrics.")
@click.option("--metrics-host", default="0.0.0.0", show_default=True,  # noqa: S104
              help="Address the /healthz and /metrics port binds to.")
@click.option("--peering", default="changegate", show_default=True,
              help="Kopf ClusterKopfPeering name: one active replica, others wait as standby.")
@click.option("--standalone", is_flag=True,
              help="No peering: for a single replica (the chart's Recreate Deployment).")
@click.option("--expected-webhooks", "webhooks_path", type=click.Path(dir_okay=False),
              help="The chart's rendering of the webhook configuration's entries "
                   "(changegate-config webhooks.yaml): sets changegate_webhook_config_drift "
                   "while the live configuration differs.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def operator(config_path: str | None, namespace: str | None, kubeconfig: str | None,
             metrics_port: int, metrics_host: str, peering: str, standalone: bool,
             webhooks_path: str | None, log_level: str) -> None:
    """Run the ChangeApproval operator: phases, expiry, the ledger of used approvals."""
    # Heavy imports (kopf, kubernetes) only when the command runs, never for --help.
    from changegate import kube
    from changegate.config import load_config
    from changegate.operator.app import run
    from changegate.operator.context import Context
    from changegate.operator.logs import setup_logging

    process = load_config(config_path, flags={"namespace": namespace}).process
    expected = None
    if webhooks_path is not None:
        from changegate.files import read_text
        from changegate.operator.drift import load_expected
        try:
            expected = load_expected(read_text(webhooks_path))
        except ValueError as exc:
            raise ChangeGateError(f"--expected-webhooks {webhooks_path}: {exc}") from exc

    async def check_kubeconfig() -> None:
        # Fail fast with one line when there is no usable configuration at all.
        await (await kube.async_client(kubeconfig)).close()

    asyncio.run(check_kubeconfig())
    setup_logging(log_level)
    try:
        asyncio.run(run(Context(process=process, kubeconfig=kubeconfig,
                                expected_webhooks=expected), peering=peering,
                        standalone=standalone, metrics_host=metrics_host,
                        metrics_port=metrics_port))
    except OSError as exc:  # the metrics port is taken, say
        raise ChangeGateError(f"operator: {exc.strerror or exc}") from exc
    logging.getLogger("changegate.operator").info("operator stopped")
