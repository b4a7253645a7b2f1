"""A real `changegate serve` process over real TLS, and a client that trusts its test CA;
KubeCache against the fake API server."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from changegate.core.snapshot import ProcessConfig
from changegate.kube import connect_async
from changegate.webhook.cache import KubeCache
from tests.fakeapi import FakeKube, free_port
from tests.integration.tlsutil import TestCA
from tests.support import FIXTURES, trust_yaml

PAYMENTS = {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "payments", "labels": {"tier": "tier-1"}}}


class Server:
    """One `changegate serve` subprocess; its JSON log lines are in `log_path`."""

    def __init__(self, args: list[str], workdir: Path, ca: TestCA, *, cert: Path, key: Path,
                 env: dict[str, str] | None = None) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.ca = ca
        self.cert, self.key = cert, key
        self.log_path = workdir / f"serve-{self.port}.log"
        argv = [sys.executable, "-m", "changegate", "serve", "--address", "127.0.0.1",
                "--port", str(self.port), "--metrics-port", str(self.metrics_port),
                "--tls-cert", str(cert), "--tls-key", str(key), *args]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})})

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/validate"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.metrics_url + path, timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait(self, path: str = "/readyz", timeout: float = 20.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}:\n{self.logs()}")
            try:
                if self.get(path)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"serve not answering {path}:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self, until: Any = None, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The server's JSON log lines; with `until`, wait until `until(records)` is true
        (for lines logged after the event the test sees, such as a reload)."""
        deadline = time.monotonic() + timeout
        while True:
            records = self._records()
            if until is None or until(records) or time.monotonic() > deadline:
                return records
            time.sleep(0.05)

    def _records(self) -> list[dict[str, Any]]:
        import json

        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def write_state(directory: Path, *objects: dict[str, Any], policy: str = "",
                trust: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trust.yaml").write_text(trust_yaml() if trust is None else trust)
    (directory / "policy.yaml").write_text(policy)
    (directory / "objects.yaml").write_text(yaml.safe_dump_all([PAYMENTS, *objects]))
    return directory


@pytest.fixture(scope="session")
def ca() -> TestCA:
    return TestCA.create()


@pytest.fixture
def start_server(tmp_path: Path, ca: TestCA) -> Iterator[Any]:
    started: list[Server] = []

    def start(*args: str, wait: str | None = "/readyz", env: dict[str, str] | None = None,
              cert: tuple[Path, Path] | None = None) -> Server:
        cert_file, key_file = cert or ca.issue(tmp_path / f"tls-{len(started)}")[:2]
        server = Server(list(args), tmp_path, ca, cert=cert_file, key=key_file, env=env)
        started.append(server)
        return server.wait(wait) if wait else server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def static_server(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[Server]:
    """serve --static with the default policy and the support trust store, one per module
    (it keeps no state a test could change)."""
    work = tmp_path_factory.mktemp("static")
    cert, key, _ = ca.issue(work / "tls")
    server = Server(["--static", str(write_state(work / "state"))], work, ca, cert=cert,
                    key=key)
    try:
        yield server.wait()
    finally:
        server.stop()


@pytest.fixture
async def client(ca: TestCA) -> Any:
    connector = aiohttp.TCPConnector(ssl=ca.client_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


def client_tls(ca: TestCA) -> ssl.SSLContext:
    return ca.client_context()


# -- KubeCache against the fake API server (test_cache.py, test_unknown_namespace.py) ----------
@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeKube]:
    api = FakeKube(tmp_path)  # not started: each test starts it when its story needs
    yield api
    api.close()


@pytest.fixture
async def make_cache() -> Any:
    made: list[KubeCache] = []

    async def make(api: FakeKube) -> KubeCache:
        connected = await connect_async(api.kubeconfig("webhook"))
        cache = KubeCache(connected, ProcessConfig(namespace="changegate"))
        cache.start()
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.stop()
    # A TLS connection closes with a close_notify round trip to the fake; let those finish
    # in this loop, or a socket still closing when the loop ends is reported as leaked.
    await asyncio.sleep(0.2)
