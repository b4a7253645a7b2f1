"""The opt-in client-certificate requirement (SPEC §5, issue 18 item 1), over real TLS:
with `--client-ca` (or the `clientCa` setting) the HTTPS port answers only a client whose
certificate that CA signed, as an API server configured to present one; any other client,
a pod posting a forged review say, is refused in the handshake. The probe port stays open.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration import tlsutil
from tests.integration.conftest import write_state
from tests.support import fixture


def client_context(server_ca: tlsutil.TestCA, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = server_ca.client_context()
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


async def post(server: Any, context: ssl.SSLContext) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(ssl=context)
    async with (aiohttp.ClientSession(connector=connector) as session,
                session.post(server.url, json=fixture("deployment-update")) as response):
        assert response.status == 200
        return (await response.json())["response"]


@pytest.fixture
def apiserver_ca(tmp_path: Path) -> tuple[tlsutil.TestCA, Path]:
    ca = tlsutil.TestCA.create("kube-apiserver-client-ca")
    return ca, ca.write_ca(tmp_path / "client-ca.crt")


@pytest.mark.parametrize("how", ["flag", "env"])
async def test_only_a_client_the_ca_signed_is_answered(tmp_path, start_server, ca,
                                                       apiserver_ca, how):
    client_ca, ca_file = apiserver_ca
    args, env = ["--static", str(write_state(tmp_path / "state"))], None
    if how == "flag":
        args += ["--client-ca", str(ca_file)]
    else:
        env = {"CHANGEGATE_CLIENT_CA": str(ca_file)}
    server = start_server(*args, env=env)
    apiserver = client_ca.issue(tmp_path / "apiserver", "kube-apiserver")[:2]

    answer = await post(server, client_context(ca, apiserver))
    assert answer["allowed"] is False and answer["status"]["code"] == 403  # decided

    with pytest.raises(aiohttp.ClientError):  # no certificate: refused in the handshake
        await post(server, client_context(ca, None))
    other = tlsutil.TestCA.create("someone-else")
    stranger = other.issue(tmp_path / "pod", "pod")[:2]
    with pytest.raises(aiohttp.ClientError):  # a certificate some other CA signed
        await post(server, client_context(ca, stranger))
    assert server.get("/readyz")[0] == 200  # probes and metrics need no certificate


async def test_without_the_option_no_certificate_is_asked_for(tmp_path, start_server, ca):
    server = start_server("--static", str(write_state(tmp_path / "state")))
    assert (await post(server, client_context(ca, None)))["allowed"] is False


def test_a_client_ca_that_is_no_certificate_stops_the_start(tmp_path, ca):
    cert, key, _ = ca.issue(tmp_path / "tls")
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate\n")
    done = subprocess.run(
        [sys.executable, "-m", "changegate", "serve", "--tls-cert", str(cert), "--tls-key",
         str(key), "--client-ca", str(bad), "--static", str(write_state(tmp_path / "s"))],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"--client-ca {bad}" in done.stderr and "Traceback" not in done.stderr
