"""Certificate rotation while serving, the way the kubelet updates a Secret volume: a new
timestamped directory, then an atomic swap of the `..data` symlink."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from pathlib import Path

from cryptography import x509

from tests.integration.conftest import write_state
from tests.support import fixture

BODY = json.dumps(fixture("deployment-update")).encode()


def secret_volume(root: Path, version: str, cert: Path, key: Path) -> None:
    """Write a kubelet-style atomic-writer layout, or swap it to a new version."""
    data = root / f"..{version}"
    data.mkdir(parents=True)
    (data / "tls.crt").write_bytes(cert.read_bytes())
    (data / "tls.key").write_bytes(key.read_bytes())
    tmp = root / "..data_tmp"
    tmp.symlink_to(data.name)
    tmp.replace(root / "..data")  # rename(2): atomic
    for name in ("tls.crt", "tls.key"):
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


async def one_request(port: int, context: ssl.SSLContext) -> tuple[int, int]:
    """A fresh TLS connection: (HTTP status, serial of the certificate it was shown)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(BODY), BODY))
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()
    finally:
        writer.close()
    return int(status_line.split()[1]), x509.load_der_x509_certificate(der).serial_number


async def test_a_rotated_certificate_is_served_on_the_next_handshake_without_a_failed_request(
        tmp_path, ca, start_server, client):
    old_cert, old_key, old = ca.issue(tmp_path / "v1")
    new_cert, new_key, new = ca.issue(tmp_path / "v2")
    volume = tmp_path / "volume"
    secret_volume(volume, "2026_11_23_v1", old_cert, old_key)
    server = start_server("--static", str(write_state(tmp_path / "s")),
                          "--tls-poll-seconds", "0.1",
                          cert=(volume / "tls.crt", volume / "tls.key"))
    context = ca.client_context()
    assert await one_request(server.port, context) == (200, old.serial_number)
    # A keep-alive connection opened before the rotation keeps working after it.
    async with client.post(server.url, data=BODY) as response:
        assert response.status == 200

    results: list[tuple[int, int]] = []
    per_worker: list[list[int]] = [[] for _ in range(4)]
    stop = asyncio.Event()

    async def hammer(mine: list[int]) -> None:
        while not stop.is_set():
            status, serial = await one_request(server.port, context)
            results.append((status, serial))
            mine.append(serial)

    workers = [asyncio.ensure_future(hammer(mine)) for mine in per_worker]
    await asyncio.sleep(0.3)
    secret_volume(volume, "2026_11_23_v2", new_cert, new_key)
    for _ in range(100):
        await asyncio.sleep(0.05)
        if results and results[-1][1] == new.serial_number:
            break
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*workers)
    assert all(status == 200 for status, _ in results), results
    serials = [serial for _, serial in results]
    assert serials[0] == old.serial_number and serials[-1] == new.serial_number
    # Once a connection saw the new certificate, the next one never sees the old (per
    # worker: across workers, a handshake begun before the reload may finish after).
    for seen in per_worker:
        switched = seen.index(new.serial_number)
        assert set(seen[:switched]) <= {old.serial_number}
        assert set(seen[switched:]) == {new.serial_number}
    async with client.post(server.url, data=BODY) as response:
        assert response.status == 200
    assert any(r.get("msg") == "tls certificate reloaded" for r in server.log_records(
        until=lambda rs: any(r.get("msg") == "tls certificate reloaded" for r in rs)))


async def test_a_half_written_rotation_keeps_the_old_certificate(tmp_path, ca, start_server):
    cert, key, old = ca.issue(tmp_path / "v1")
    other_cert, _, _ = ca.issue(tmp_path / "v2")
    server = start_server("--static", str(write_state(tmp_path / "s")),
                          "--tls-poll-seconds", "0.1", cert=(cert, key))
    context = ca.client_context()
    cert.write_bytes(other_cert.read_bytes())  # new cert, old key: not a pair
    os.utime(cert)
    await asyncio.sleep(0.5)
    assert await one_request(server.port, context) == (200, old.serial_number)
    assert any("do not load yet" in r.get("msg", "") for r in server.log_records(
        until=lambda rs: any("do not load yet" in r.get("msg", "") for r in rs)))
