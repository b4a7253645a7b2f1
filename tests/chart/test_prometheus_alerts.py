"""A real Prometheus, loaded with the shipped rules, alerts on a change the webhook denied.

Prometheus (Debian's package) and `changegate serve --static DIR` run on loopback in a
temporary directory; the webhook's state is what the chart renders (policy, trust store,
process config). Scrape and evaluation run every second.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.integration import tlsutil
from tests.support import FIXTURES

from .alerts import monitoring_values, write_rules_file
from .rendering import ci_values, merged, objects

PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # loopback only
        return answer.status, answer.read()


def _wait_for(url, what, process, seconds=60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}")
        try:
            if _get(url)[0] == 200:
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    pytest.fail(f"{what} not ready at {url} after {seconds:.0f} s")


def _static_state(directory: Path, values) -> Path:
    """The webhook's state as the chart renders it, plus the tier-1 namespace payments."""
    objs = objects(values)
    data = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    directory.mkdir()
    (directory / "policy.yaml").write_text(data["changegate-policy"]["policy.yaml"])
    (directory / "trust.yaml").write_text(data["changegate-trust"]["approvers.yaml"])
    (directory / "namespaces.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "payments", "labels": {"tier": "tier-1",
                                                    "kubernetes.io/metadata.name": "payments"}}}))
    config = directory.parent / "config.yaml"
    config.write_text(data["changegate-config"]["config.yaml"])
    return config


def _start(args, log: Path):
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def _stop(*processes):
    for process in processes:
        if process is not None and process.poll() is None:
            process.terminate()
    for process in processes:
        if process is not None:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _alerts(prometheus_url):
    _, body = _get(f"{prometheus_url}/api/v1/alerts")
    return json.loads(body)["data"]["alerts"]


def test_a_denied_change_raises_the_rejected_change_alert(tmp_path):
    values = merged(ci_values()["default-values.yaml"], {"trustStore": ci_values()[
        "ha-values.yaml"]["trustStore"]}, monitoring_values())
    config = _static_state(tmp_path / "state", values)
    ca = tlsutil.TestCA.create()
    cert, key, _ = ca.issue(tmp_path / "tls")
    port, metrics_port, prometheus_port = _free_port(), _free_port(), _free_port()

    rules = tmp_path / "rules.yaml"
    write_rules_file(rules, values)  # the shipped rules, unchanged
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{
            # The job the ServiceMonitor produces (the Service's name), which the rules use.
            "job_name": "changegate-webhook",
            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
        }],
    }))

    webhook = prometheus = None
    try:
        webhook = _start([sys.executable, "-m", "changegate", "serve",
                          f"--tls-cert={cert}", f"--tls-key={key}", f"--port={port}",
                          f"--metrics-port={metrics_port}", f"--config={config}",
                          f"--static={tmp_path / 'state'}"], tmp_path / "webhook.log")
        prometheus = _start([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                            tmp_path / "prometheus.log")
        _wait_for(f"http://127.0.0.1:{metrics_port}/readyz", "changegate serve", webhook)
        prometheus_url = f"http://127.0.0.1:{prometheus_port}"
        _wait_for(f"{prometheus_url}/-/ready", "prometheus", prometheus)

        review = json.loads((FIXTURES / "deployment-update.json").read_text())
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/validate", data=json.dumps(review).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        context = ssl.create_default_context(cadata=ca.pem.decode())
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            response = json.loads(answer.read())["response"]
        assert response["uid"] == review["request"]["uid"]
        assert response["allowed"] is False
        assert response["status"]["code"] == 403

        deadline = time.monotonic() + 60
        rejected = []
        while time.monotonic() < deadline and not rejected:
            rejected = [a for a in _alerts(prometheus_url)
                        if a["labels"]["alertname"] == "ChangeGateRejectedChange"]
            time.sleep(0.5)
        logs = "\n".join(p.read_text() for p in tmp_path.glob("*.log"))
        assert rejected, f"no ChangeGateRejectedChange alert within 60 s\n{logs[-4000:]}"
        [alert] = rejected
        assert alert["state"] in {"pending", "firing"}
        assert alert["labels"]["severity"] == "ticket"
        assert alert["labels"]["namespace"] == "payments"
        assert alert["labels"]["kind"] == "Deployment"
        assert alert["labels"]["reason"] == "no_approval"
        assert alert["annotations"]["runbook_url"].endswith("#changegaterejectedchange")
        # Waiting for approval is no page.
        assert not [a for a in _alerts(prometheus_url)
                    if a["labels"]["alertname"] == "ChangeGateRejectedChangeTrust"]
    finally:
        _stop(webhook, prometheus)
