"""The operator process around the handlers: kopf's settings, login, health port, CLI."""

from __future__ import annotations

import kopf
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from changegate.cli.main import cli
from changegate.operator.app import configure, connection_info
from changegate.operator.health import make_app
from changegate.operator.metrics import OperatorMetrics


def test_kopf_keeps_its_state_only_under_the_prefix_the_digest_ignores():
    settings = kopf.OperatorSettings()
    configure(settings, peering="changegate", standalone=False)
    body = kopf.Body({"metadata": {"name": "x", "annotations": {}}})
    progress = settings.persistence.progress_storage
    diffbase = settings.persistence.diffbase_storage
    keys = [*progress.make_keys("changeapproval-resync", body=body),
            *progress.make_keys(progress.touch_key, body=body),
            *diffbase.make_keys(diffbase.key, body=body), settings.persistence.finalizer]
    assert keys and all(k.startswith("changegate.io/") for k in keys), keys
    assert "changegate.io/approval" not in keys  # never the annotation the operator writes


def test_peering_is_mandatory_unless_standalone():
    settings = kopf.OperatorSettings()
    configure(settings, peering="changegate", standalone=False)
    assert (settings.peering.name, settings.peering.mandatory,
            settings.peering.clusterwide) == ("changegate", True, True)
    configure(settings, peering="changegate", standalone=True)
    assert (settings.peering.standalone, settings.peering.mandatory) == (True, False)
    assert settings.watching.server_timeout < settings.watching.client_timeout


async def test_kopf_logs_in_with_the_kubeconfigs_credentials(kubeconfig, kube):
    info = await connection_info(kubeconfig)
    assert (info.server, info.scheme, info.token) == (str(kube.url).rstrip("/"), "Bearer",
                                                       "operator-token")


async def test_healthz_says_starting_until_kopf_is_up_and_metrics_count_phases():
    ready = {"up": False}
    metrics = OperatorMetrics()
    async with TestClient(TestServer(make_app(lambda: ready["up"], metrics))) as client:
        assert (await client.get("/healthz")).status == 503
        ready["up"] = True
        response = await client.get("/healthz")
        assert (response.status, await response.text()) == (200, "ok\n")
        metrics.saw("uid-1", "")
        metrics.saw("uid-2", "Approved")
        metrics.saw("uid-2", "Applied")
        text = await (await client.get("/metrics")).text()
    assert 'changegate_changeapprovals{phase="Pending"} 1.0' in text
    assert 'changegate_changeapprovals{phase="Applied"} 1.0' in text
    assert 'changegate_changeapprovals{phase="Approved"} 0.0' in text


def test_the_command_is_listed_and_documented():
    result = CliRunner().invoke(cli, ["operator", "--help"])
    assert result.exit_code == 0
    for flag in ("--config", "--namespace", "--kubeconfig", "--metrics-port", "--peering",
                 "--standalone"):
        assert flag in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--config", "/nonexistent/config.yaml"], "--config /nonexistent/config.yaml: no such file"),
    (["--namespace", "Not_A_Namespace"], "is not a namespace name"),
    (["--kubeconfig", "/nonexistent/kubeconfig"], "kubeconfig /nonexistent/kubeconfig: no such"),
])
def test_bad_settings_stop_it_with_one_line(args, message, capsys):
    from changegate.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["operator", "--metrics-port", "0", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
