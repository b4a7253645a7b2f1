"""What users feel: the latency changegate adds to writes at the real kube-apiserver.

    python bench/apiserver_latency.py [--sequential 200] [--writers 20] [--per-writer 20]
                                      [--json FILE]

Starts the test control plane (tests/cluster: etcd + kube-apiserver 1.37 built from Go
modules) and changegate installed as the e2e stories install it (tests/e2e/stories.py:
`changegate serve` on 127.0.0.1, the chart's webhook configuration), then times PATCHes
that the webhook ADMITS, as alice (client certificate, keep-alive HTTPS, no kubectl process
in the measurement), in one run three ways: with changegate registered; with an allow-all
aiohttp webhook (bench/allow_all.py: parse, answer allowed) registered the same way (the
chart's configuration, only its URLs pointing elsewhere); and with no webhook:

- `no-change`: a GitOps tool re-stamping its tracking annotation
  (`argocd.argoproj.io/tracking-id`, outside the digest) on Deployments in a tier-1
  namespace in `deny` mode: the webhook computes both digests, finds them equal, admits.
  The commonest admitted write in a gated namespace (approved changes are single-use).
- `warn`: ConfigMap data changes in a tier-1 namespace in `warn` mode (onboarding): the
  full decision, no approval found, admitted with warnings.

Each path runs `--sequential` PATCHes one after the other, then `--writers` concurrent
writers doing `--per-writer` PATCHes each (every writer its own object and connection).
Reported: client-side p50/p99/mean per run, the differences between the modes (the goal:
changegate within 1 ms p99 of allow-all), the machine's load average, and, from
kube-apiserver's own STABLE histogram `apiserver_admission_webhook_admission_duration_seconds`
(read as admin via /metrics, delta of _sum/_count and of the 5 ms / 25 ms buckets around
each run), how long the API server spent calling the webhook per request.
The e2e suite runs a short version (tests/e2e/test_stories_latency.py) through
`measure()`.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TRACKING = "argocd.argoproj.io/tracking-id"
WARN = {"changegate.io/enforcement": "warn"}
HISTOGRAM = "apiserver_admission_webhook_admission_duration_seconds"
_SAMPLE = re.compile(rf"^{HISTOGRAM}_(?P<what>sum|count|bucket)\{{(?P<labels>[^}}]*)\}} "
                     r"(?P<value>\S+)$", re.M)


@dataclass(frozen=True)
class Target:
    """Where and as whom to PATCH: the API server's URL and a client certificate."""

    host: str
    port: int
    context: ssl.SSLContext

    @classmethod
    def of(cls, cluster: Any, user: str = "alice") -> Target:
        ctx = ssl.create_default_context(cafile=str(cluster.ca.pair.cert))
        pair = cluster.client_certs[user]
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
        host, port = cluster.url.removeprefix("https://").rsplit(":", 1)
        return cls(host, int(port), ctx)

    def connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                           timeout=30)


def _patch(conn: http.client.HTTPSConnection, path: str, body: dict[str, Any]) -> float:
    data = json.dumps(body).encode()
    began = time.perf_counter()
    conn.request("PATCH", path, body=data,
                 headers={"Content-Type": "application/merge-patch+json"})
    response = conn.getresponse()
    payload = response.read()
    took = time.perf_counter() - began
    if response.status != 200:
        raise RuntimeError(f"PATCH {path}: HTTP {response.status}: {payload[:300]!r}")
    return took


@dataclass(frozen=True)
class Path_:
    """One admitted write: the objects it touches and the patch for the i-th write."""

    name: str
    namespace: str
    plural: str  # "deployments" (apps/v1) or "configmaps" (v1)
    objects: tuple[str, ...]
    body: Callable[[int], dict[str, Any]]

    @property
    def entry(self) -> str:
        """The webhook entry of the chart that these writes call."""
        return f"{self.plural}.changegate.io"

    def url(self, obj: str) -> str:
        base = "/apis/apps/v1" if self.plural == "deployments" else "/api/v1"
        return f"{base}/namespaces/{self.namespace}/{self.plural}/{obj}"


def sequential(target: Target, path: Path_, n: int, offset: int) -> list[float]:
    conn = target.connect()
    try:
        url = path.url(path.objects[0])
        return [_patch(conn, url, path.body(offset + i)) for i in range(n)]
    finally:
        conn.close()


def concurrent(target: Target, path: Path_, writers: int, per_writer: int,
               offset: int) -> list[float]:
    """`writers` threads, each its own object and keep-alive connection, started together."""
    results: list[list[float]] = [[] for _ in range(writers)]
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def writer(k: int) -> None:
        conn = target.connect()
        try:
            conn.connect()  # the TLS handshake happens before the clock starts
            url = path.url(path.objects[1 + k])
            start.wait()
            for i in range(per_writer):
                results[k].append(_patch(conn, url, path.body(offset + i)))
        except BaseException as exc:  # reported after join
            errors.append(exc)
            start.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [x for r in results for x in r]


def webhook_histogram(cluster: Any, entry: str) -> dict[str, float]:
    """The API server's webhook histogram for one changegate entry (UPDATE)."""
    text = cluster.kubectl("admin", "get", "--raw", "/metrics", check=True).stdout
    out = {"sum": 0.0, "count": 0.0, "le_0.005": 0.0, "le_0.025": 0.0}
    for m in _SAMPLE.finditer(text):
        labels = dict(kv.split("=", 1) for kv in m["labels"].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("name") != entry or labels.get("operation") != "UPDATE":
            continue
        if m["what"] in ("sum", "count"):
            out[m["what"]] += float(m["value"])
        elif labels.get("le") in ("0.005", "0.025"):
            out[f"le_{labels['le']}"] += float(m["value"])
    return out


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]

    return {"n": len(ordered), "p50_ms": pct(50) * 1000, "p99_ms": pct(99) * 1000,
            "mean_ms": statistics.fmean(ordered) * 1000, "max_ms": ordered[-1] * 1000}


def _run(cluster: Any, entry: str, run: Callable[[], list[float]]) -> dict[str, float]:
    before = webhook_histogram(cluster, entry)
    result = _stats(run())
    after = webhook_histogram(cluster, entry)
    calls = after["count"] - before["count"]
    result["webhook_calls"] = calls
    if calls:
        result["webhook_mean_ms"] = (after["sum"] - before["sum"]) / calls * 1000
        result["webhook_le_5ms"] = (after["le_0.005"] - before["le_0.005"]) / calls
        result["webhook_le_25ms"] = (after["le_0.025"] - before["le_0.025"]) / calls
    return result


def prepare(gate: Any, writers: int) -> list[Path_]:
    """Two tier-1 namespaces (deny, warn) with one object per writer plus one."""
    from tests.e2e.stories import configmap, deployment

    names = tuple(f"bench-{i}" for i in range(writers + 1))
    deny = gate.namespace("bench-deny", *[deployment(n, "1.0.0", replicas=1) for n in names])
    warn = gate.namespace("bench-warn", *[configmap(n, {"n": "0"}) for n in names],
                          annotations=WARN)
    return [
        Path_("no-change", deny, "deployments", names,
              lambda i: {"metadata": {"annotations": {TRACKING: f"bench:{i}"}}}),
        Path_("warn", warn, "configmaps", names, lambda i: {"data": {"n": str(i + 1)}}),
    ]


MODES = ("none", "allow-all", "changegate")


class AllowAll:
    """bench/allow_all.py on its own port with changegate's serving certificate, registered
    through a copy of the chart's webhook configuration that only points elsewhere: the
    same entries, rules, namespace selectors and timeouts as changegate's."""

    def __init__(self, cluster: Any, gate: Any) -> None:
        from tests.cluster.webhooks import probe_configmap
        from tests.e2e.stories import free_port, wait_for

        self.cluster, self.gate = cluster, gate
        self.port, self.metrics_port = free_port(), free_port()
        cert = cluster.webhook_cert
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "allow_all.py"), "--port", str(self.port),
             "--metrics-port", str(self.metrics_port), "--cert", str(cert.cert),
             "--key", str(cert.key)], stdin=subprocess.DEVNULL)
        wait_for(lambda: self.proc.poll() is not None or _ready(self.metrics_port),
                 "allow-all /readyz", timeout=30)
        if self.proc.poll() is not None:
            raise RuntimeError(f"allow_all.py exited with {self.proc.returncode}")
        self.vwc = copy.deepcopy(gate.vwc)
        ours = f"https://127.0.0.1:{gate.port}/"
        for hook in self.vwc["webhooks"]:
            url = hook["clientConfig"]["url"]
            assert url.startswith(ours), url
            hook["clientConfig"]["url"] = f"https://127.0.0.1:{self.port}/" + url[len(ours):]
        self.probe = probe_configmap(gate.probe_ns)

    def register(self) -> None:
        from tests.cluster.webhooks import register_webhook

        register_webhook(self.cluster, self.vwc, probe=self.probe,
                         webhook="configmaps.changegate.io")

    def unregister(self) -> None:
        from tests.cluster.webhooks import unregister_webhook

        unregister_webhook(self.cluster, self.vwc, probe=self.probe,
                           webhook="configmaps.changegate.io")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def measure(cluster: Any, gate: Any, *, sequential_n: int = 200, writers: int = 20,
            per_writer: int = 20, warmup: int = 10) -> dict[str, Any]:
    """Each path with changegate registered, with the allow-all webhook registered the
    same way instead, and with no webhook; changegate is registered again when done if it
    was. Returns {path: {mode: {"sequential"|"concurrent": stats}}}, mode in MODES."""
    load_before = _load()
    target = Target.of(cluster)
    paths = prepare(gate, writers)
    results: dict[str, Any] = {p.name: {} for p in paths}
    offset = 0
    was_registered = gate.registered
    allow_all = AllowAll(cluster, gate)
    try:
        # One configuration at a time (each removed, and no longer called, before the next
        # is applied), so no write is sent to the webhook of another mode.
        for mode in ("changegate", "allow-all", "none"):
            if mode == "changegate" and not gate.registered:
                gate.register()
            if mode == "allow-all":
                if gate.registered:
                    gate.unregister()
                allow_all.register()
            if mode == "none":
                allow_all.unregister()
            for p in paths:
                sequential(target, p, warmup, offset)  # connections, caches
                offset += warmup
                seq = _run(cluster, p.entry,
                           lambda p=p, o=offset: sequential(target, p, sequential_n, o))
                offset += sequential_n
                con = _run(cluster, p.entry,
                           lambda p=p, o=offset: concurrent(target, p, writers, per_writer, o))
                offset += per_writer
                results[p.name][mode] = {"sequential": seq, "concurrent": con}
    finally:
        allow_all.close()
    if was_registered and not gate.registered:
        gate.register()
    results["settings"] = {"sequential": sequential_n, "writers": writers,
                           "per_writer": per_writer, "load_before": load_before}
    return results


def _load() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (other work competes for its cores)."""
    return [round(x, 2) for x in os.getloadavg()]


def table(results: dict[str, Any]) -> str:
    rows = [("path", "run", "webhook", "p50 ms", "p99 ms", "mean ms", "API server in webhook")]
    for path, modes in results.items():
        if path == "settings":
            continue
        for run in ("sequential", "concurrent"):
            for mode in MODES:
                r = modes[mode][run]
                inside = (f"{r['webhook_mean_ms']:.2f} ms/call, {r['webhook_le_5ms']:.0%} "
                          f"<= 5 ms" if r.get("webhook_calls") else "-")
                rows.append((path, run, mode, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                             f"{r['mean_ms']:.2f}", inside))
            for over, under in (("allow-all", "none"), ("changegate", "none"),
                                ("changegate", "allow-all")):
                w, n = modes[over][run], modes[under][run]
                rows.append((path, run, f"{over} - {under}",
                             f"{w['p50_ms'] - n['p50_ms']:+.2f}",
                             f"{w['p99_ms'] - n['p99_ms']:+.2f}",
                             f"{w['mean_ms'] - n['mean_ms']:+.2f}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--writers", type=int, default=20)
    parser.add_argument("--per-writer", type=int, default=20)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args(argv)

    from tests.cluster import Cluster
    from tests.e2e.stories import Gate

    # No kube-controller-manager: nothing but the bench writes, so nothing else competes
    # for the two cores (the gated paths never need a rollout).
    with Cluster() as cluster:
        gate = Gate(cluster, operator=False)
        try:
            gate.install()
            results = measure(cluster, gate, sequential_n=args.sequential,
                              writers=args.writers, per_writer=args.per_writer)
        finally:
            gate.close()
    print(table(results))
    print(f"load average before / after: {results['settings']['load_before']} / {_load()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
