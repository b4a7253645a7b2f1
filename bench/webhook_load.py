"""Load test: `changegate serve` against a trivial allow-all aiohttp webhook, same run, same TLS.

    python bench/webhook_load.py [--rounds 6] [--duration 3] [--connections 32] [--rate 500]
                                 [--fixed-seconds 10] [--approvals 10000] [--cores 0,1]
                                 [--quiet-variant] [--compare DIR]

serve runs as installed (plain Python, as in the container image). Three servers run
at once, pinned to the first core, and take turns under load from the second core: the
allow-all baseline, `serve --static` (the fixtures' state) and `serve` with 10,000
ChangeApprovals listed from a fake API server (its cache, the production path), both at
the default log level (one audit line per decision). In interleaved rounds (A B C, C B A,
...) it measures max req/s with p50/p99 (wrk, keep-alive, TLS, fixture reviews
round-robin), and reports each server's median req/s and the median over rounds of its
ratio to the baseline's req/s in the same round: the machine's speed drifts too much for
one run after another to compare. Then, as a check on that, the same ratio "at once":
each server side by side with the baseline at the same moment, both on the server core,
each saturated by its own wrk; the ratio of their CPU per request is the ratio of what
one core would serve, and it does not drift with the machine, since both see the same
moment. Then p50/p99/max at a fixed 500 req/s (open-loop aiohttp
client: latency counted from the scheduled send time, so a stall is not hidden), the
server's CPU per request, and its RSS.
`--compare DIR` adds `serve --static` run from another copy of the package (DIR holds
`changegate/`, e.g. an older checkout's controller/), loaded in the same rounds: what a
change costs, under the same load.
Needs `wrk` (Debian: apt-get install wrk) and `taskset` (util-linux).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fakeapi import free_port  # noqa: E402
from tests.integration.tlsutil import TestCA  # noqa: E402
from tests.support import FIXTURES  # noqa: E402

WRK_LUA = """
local requests, n, i = {}, 0, 0
function init(args)
  for _, path in ipairs(args) do
    local f = assert(io.open(path, "rb")); local body = f:read("*a"); f:close()
    n = n + 1
    requests[n] = wrk.format("POST", "/validate", {["Content-Type"] = "application/json"}, body)
  end
end
function request() i = i % n + 1; return requests[i] end
function done(summary, latency, _)
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d,'
    .. ' "max_us": %d, "errors": %d, "non2xx": %d}\\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout, summary.errors.status))
end
"""


# -- a fake API server holding N signed ChangeApprovals ---------------------------------------
def fake_api(args: argparse.Namespace) -> None:
    """The tests' fake API server; it writes its kubeconfig (user `bench`) into --state."""
    import threading

    from tests.fakeapi import FakeKube, configmap, namespace

    def state_objects(count: int, state: Path) -> list[dict[str, Any]]:
        import yaml

        objects = [namespace("payments", {"tier": "tier-1"}),
                   configmap("changegate-trust", "changegate",
                             {"approvers.yaml": (state / "trust.yaml").read_text()}),
                   configmap("changegate-policy", "changegate", {"policy.yaml": ""})]
        objects += [o for o in yaml.safe_load_all((state / "objects.yaml").read_text())
                    if o.get("kind") == "ChangeApproval"]
        objects += many_approvals(count, state)
        return objects

    api = FakeKube(Path(args.state), args.port)
    for obj in state_objects(args.approvals, Path(args.state)):
        api.put(obj)
    api.start()
    api.kubeconfig("bench")
    print("READY", flush=True)
    threading.Event().wait()


def signed_approval(review: dict[str, Any], keys: list[Any], *, name: str,
                    namespace_: str | None = None) -> dict[str, Any]:
    from datetime import UTC, datetime, timedelta

    from changegate.core.compose import change_approval, signed
    from changegate.core.digest import digest

    req = review["request"]
    old, new = req.get("oldObject"), req.get("object")
    now = datetime.now(UTC).replace(microsecond=0)
    kind = req["kind"]["kind"]
    approval = change_approval(
        namespace=namespace_ or req["namespace"], name=name, cluster="",
        target={"apiVersion": "apps/v1" if kind == "Deployment" else "v1", "kind": kind,
                "name": req["name"], "uid": (old or {}).get("metadata", {}).get("uid", "none")},
        operation=req["operation"], from_digest=digest(old), to_digest=digest(new),
        record_id="CHG-9000", record_url="https://itsm.example/CHG-9000", requested_by="alice",
        issued_at=now - timedelta(minutes=10), expires_at=now + timedelta(hours=6),
        manifest=new, nonce=str(uuid.uuid4()))
    return signed(approval, *keys)


def many_approvals(count: int, state: Path) -> list[dict[str, Any]]:
    """`count` valid approvals (two signatures, full server-side-dry-run manifests with
    managedFields and the last-applied annotation) spread over 100 namespaces."""
    import copy

    from changegate.core.dsse import load_private_key

    keys = [load_private_key((state / f"{n}.key").read_bytes()) for n in ("bob", "carol")]
    base = json.loads((FIXTURES / "deployment-update.json").read_text())
    out = []
    for index in range(count):
        review = copy.deepcopy(base)
        ns, name = f"team-{index % 100:03d}", f"svc-{index:05d}"
        for obj in (review["request"]["object"], review["request"]["oldObject"]):
            obj["metadata"].update(namespace=ns, name=name)
        review["request"].update(namespace=ns, name=name)
        out.append(signed_approval(review, keys, name=f"chg-9000-{name}", namespace_=ns))
    return out


# -- load clients ---------------------------------------------------------------------------
def start_wrk(url: str, bodies: list[Path], *, duration: int, connections: int, core: str,
              workdir: Path) -> subprocess.Popen[str]:
    script = workdir / "bodies.lua"
    script.write_text(WRK_LUA)
    return subprocess.Popen(
        ["taskset", "-c", core, "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
         "-s", str(script), url, "--", *map(str, bodies)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wrk_result(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, out, err)
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    data = json.loads(line[4:])
    return {"rps": data["requests"] / (data["duration_us"] / 1e6),
            "p50_ms": data["p50_us"] / 1000, "p99_ms": data["p99_us"] / 1000,
            "errors": data["errors"] + data["non2xx"]}


def fixed_rate_client(args: argparse.Namespace) -> None:
    """Open loop at --rate req/s: latency from the scheduled send time (no coordinated
    omission); the first second is warm-up and not counted."""
    import aiohttp

    bodies = [Path(p).read_bytes() for p in args.bodies]
    context = ssl.create_default_context(cafile=args.ca)

    async def main() -> None:
        # A bounded keep-alive pool, opened before the clock starts, like the API server's
        # client to a webhook: a burst of fresh TLS handshakes would measure the handshake.
        connector = aiohttp.TCPConnector(ssl=context, limit=args.connections)
        latencies: list[float] = []
        errors = 0
        async with aiohttp.ClientSession(connector=connector) as session:
            loop = asyncio.get_running_loop()

            async def warm(body: bytes) -> None:
                async with session.post(args.url, data=body, headers={
                        "Content-Type": "application/json"}) as response:
                    await response.read()

            await asyncio.gather(*(warm(bodies[0]) for _ in range(args.connections)))

            async def one(body: bytes, scheduled: float, count: bool) -> None:
                nonlocal errors
                try:
                    async with session.post(args.url, data=body, headers={
                            "Content-Type": "application/json"}) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if count:
                    latencies.append(loop.time() - scheduled)
                    errors += 0 if ok else 1

            total = int(args.rate * (args.duration + 1))
            start = loop.time() + 0.2
            tasks = []
            for i in range(total):
                scheduled = start + i / args.rate
                delay = scheduled - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(
                    one(bodies[i % len(bodies)], scheduled, i >= args.rate)))
            await asyncio.gather(*tasks)
        latencies.sort()

        def pick(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

        print("RATE " + json.dumps({"p50_ms": pick(0.5) * 1000, "p99_ms": pick(0.99) * 1000,
                                    "max_ms": latencies[-1] * 1000, "errors": errors,
                                    "n": len(latencies)}), flush=True)

    asyncio.run(main())


def run_fixed_rate(url: str, bodies: list[Path], ca: Path, *, rate: int, duration: int,
                   core: str) -> dict[str, float]:
    proc = subprocess.run(
        ["taskset", "-c", core, sys.executable, __file__, "rate-client", "--url", url,
         "--ca", str(ca), "--rate", str(rate), "--duration", str(duration),
         *[f"--body={b}" for b in bodies]],
        capture_output=True, text=True, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RATE "))
    return json.loads(line[5:])  # type: ignore[no-any-return]


# -- orchestration ----------------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_ready(metrics_port: int, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz",
                                        timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("server not ready")


def prepare(workdir: Path) -> tuple[Path, Path, Path, Path, list[Path]]:
    import yaml

    from changegate.core.dsse import generate

    ca = TestCA.create("changegate-bench-ca")
    cert, key, _ = ca.issue(workdir / "tls")
    ca_file = ca.write_ca(workdir / "ca.crt")
    state = workdir / "state"
    state.mkdir()
    keys = {n: generate() for n in ("bob", "carol")}
    for name, k in keys.items():
        (state / f"{name}.key").write_bytes(k.pem())
    (state / "trust.yaml").write_text(yaml.safe_dump({"approvers": [
        {"name": n, "namespaces": ["*"], "keys": [k.public.pem()]} for n, k in keys.items()]}))
    (state / "policy.yaml").write_text("")
    update = json.loads((FIXTURES / "deployment-update.json").read_text())
    approval = signed_approval(update, list(keys.values()), name="chg-9000")
    # As stored by the API server: uid and resourceVersion are what verification is memoized by.
    approval["metadata"].update(uid="7d1c6a52-0000-4000-8000-000000009000", resourceVersion="1")
    (state / "objects.yaml").write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "payments", "labels": {"tier": "tier-1"}}}, approval]))
    for extra in state.glob("*.key"):  # keys are for the fake API process, not for serve
        extra.rename(workdir / extra.name)
    bodies = sorted(FIXTURES.glob("*.json"))
    return cert, key, ca_file, state, bodies


class Server:
    """One server under test: started once, pinned to the server core, idle between its
    turns (the others are idle during its turn)."""

    def __init__(self, label: str, argv: list[str], opts: argparse.Namespace,
                 common: dict[str, Any], *, package: Path | None = None) -> None:
        self.label, self.opts, self.common = label, opts, common
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}/validate"
        self.proc = subprocess.Popen(
            ["taskset", "-c", opts.cores.split(",")[0], *argv, "--port", str(self.port),
             "--metrics-port", str(self.metrics_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=os.environ if package is None else {**os.environ, "PYTHONPATH": str(package)})
        self.rounds: list[dict[str, float]] = []
        self.cpu = 0.0
        self.requests = 0

    def ready(self) -> None:
        wait_ready(self.metrics_port, self.proc)
        self.rss_start = rss_mib(self.proc.pid)

    def start_wrk(self, seconds: int, workdir: Path) -> subprocess.Popen[str]:
        return start_wrk(self.url, self.common["bodies"], duration=seconds,
                         connections=self.opts.connections,
                         core=self.opts.cores.split(",")[1], workdir=workdir)

    def wrk(self, seconds: int, workdir: Path, *, count: bool = True) -> dict[str, float]:
        before = cpu_seconds(self.proc.pid)
        result = wrk_result(self.start_wrk(seconds, workdir))
        if count:
            # Server CPU per request: what the server itself spends, whatever else shares
            # the machine (req/s depends on that; this does much less).
            self.cpu += cpu_seconds(self.proc.pid) - before
            self.requests += int(result["rps"] * seconds)
            self.rounds.append(result)
        return result

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def measure(servers: list[Server], opts: argparse.Namespace, workdir: Path
            ) -> dict[str, Any]:
    """Throughput in interleaved rounds (A B C, then C B A, ...): these machines' speed
    drifts by a third within a minute, so each server's req/s is compared with the
    baseline's in the same round, and the median of those ratios is reported."""
    for server in servers:
        server.ready()
        server.wrk(2, workdir, count=False)  # warm-up: memo, digests, allocator
    for round_ in range(opts.rounds):
        for server in (servers if round_ % 2 == 0 else servers[::-1]):
            server.wrk(opts.duration, workdir)
    base = servers[0]
    results: dict[str, Any] = {}
    for server in servers:
        ratios = [r["rps"] / b["rps"] for r, b in zip(server.rounds, base.rounds, strict=True)]
        results[server.label] = {
            "rps": median([r["rps"] for r in server.rounds]),
            "rps_rounds": [round(r["rps"]) for r in server.rounds],
            "ratio": median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "p50_ms": median([r["p50_ms"] for r in server.rounds]),
            "p99_ms": median([r["p99_ms"] for r in server.rounds]),
            "errors": sum(r["errors"] for r in server.rounds),
            "cpu_us": server.cpu * 1e6 / max(1, server.requests),
            "rss_start_mib": server.rss_start}
    for server in servers[1:]:
        at_once = []
        for _ in range(opts.rounds):
            ratio, errors = ratio_at_once(base, server, opts.duration, workdir)
            at_once.append(ratio)
            results[server.label]["errors"] += errors  # an error is an error, whenever
        results[server.label].update(ratio_at_once=median(at_once),
                                     ratio_at_once_min=min(at_once),
                                     ratio_at_once_max=max(at_once))
    for server in servers:
        fixed = run_fixed_rate(server.url, server.common["bodies"], server.common["ca"],
                               rate=opts.rate, duration=opts.fixed_seconds,
                               core=opts.cores.split(",")[1])
        results[server.label].update(fixed=fixed, rss_end_mib=rss_mib(server.proc.pid))
    return results


def ratio_at_once(base: Server, server: Server, seconds: int, workdir: Path
                  ) -> tuple[float, int]:
    """The baseline and one server side by side at the same moment: both on the server
    core, each saturated by its own wrk. Each gets a share of the core, so req/s says
    little; what one core would give is 1 / (CPU per request), and the ratio of those is
    the throughput ratio. Both pay for whatever else the machine runs at that moment, so
    this ratio holds still where the interleaved one swings (0.4-0.8 between rounds on a
    busy host)."""
    cpu = [cpu_seconds(s.proc.pid) for s in (base, server)]
    procs = [s.start_wrk(seconds, workdir) for s in (base, server)]
    done = [wrk_result(p) for p in procs]
    used = [cpu_seconds(s.proc.pid) - c for s, c in zip((base, server), cpu, strict=True)]
    per_request = [u / (d["rps"] * seconds) for u, d in zip(used, done, strict=True)]
    return per_request[0] / per_request[1], int(done[1]["errors"])


def main_run(opts: argparse.Namespace) -> int:
    if not shutil.which("wrk") or not shutil.which("taskset"):
        print("needs wrk and taskset (apt-get install wrk util-linux)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="changegate-bench-"))
    cert, key, ca_file, state, bodies = prepare(workdir)
    py = sys.executable
    common = {"bodies": bodies, "ca": ca_file}
    # serve as deployed: the default log level, so one audit line per decision is written.
    serve = [py, "-m", "changegate", "serve", "--tls-cert", str(cert), "--tls-key", str(key),
             "--address", "127.0.0.1"]
    servers = [
        Server("allow-all", [py, str(REPO / "bench" / "allow_all.py"), "--cert", str(cert),
                             "--key", str(key)], opts, common),
        Server("serve --static", [*serve, "--static", str(state)], opts, common)]
    if opts.quiet_variant:  # what the audit line costs: the same server without it
        servers.append(Server("serve --static, no audit line",
                              [*serve, "--static", str(state), "--log-level", "warning"],
                              opts, common))
    if opts.compare is not None:
        servers.append(Server("serve --static, --compare DIR",
                              [*serve, "--static", str(state)], opts, common,
                              package=opts.compare))
    fake = None
    try:
        if opts.approvals:
            api_port = free_port()
            (workdir / "trust.yaml").write_text((state / "trust.yaml").read_text())
            (workdir / "objects.yaml").write_text((state / "objects.yaml").read_text())
            fake = subprocess.Popen(
                ["taskset", "-c", opts.cores.split(",")[1], py, __file__, "fake-api", "--port",
                 str(api_port), "--approvals", str(opts.approvals), "--state", str(workdir)],
                stdout=subprocess.PIPE, text=True)
            assert fake.stdout is not None and fake.stdout.readline().strip() == "READY"
            kubeconfig = workdir / "bench.kubeconfig"  # written by the fake, with its CA
            servers.append(Server(f"serve, {opts.approvals} approvals cached",
                                  [*serve, "--kubeconfig", str(kubeconfig), "--namespace",
                                   "changegate"], opts, common))
        results = measure(servers, opts, workdir)
    finally:
        for server in servers:
            server.stop()
        if fake is not None:
            fake.terminate()
            fake.wait(timeout=20)
    report(results, opts)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(results: dict[str, Any], opts: argparse.Namespace) -> None:
    print(f"\n{len(list(FIXTURES.glob('*.json')))} fixture reviews round-robin, TLS, keep-alive,"
          f" {opts.connections} connections; {opts.rounds} interleaved rounds of "
          f"{opts.duration} s each; server on core {opts.cores.split(',')[0]}, clients on "
          f"core {opts.cores.split(',')[1]}; serve in plain Python, as in the image; load "
          f"average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = (f"{'server':32} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6} "
              f"{'(min-max)':>11} {'at once':>7} {'(min-max)':>11} {'CPU us/req':>10} | "
              f"{'@' + str(opts.rate) + '/s p50':>10} "
              f"{'p99':>6} {'max':>6} | {'RSS MiB':>8}")
    print(header)
    print("-" * len(header))
    for label, r in results.items():
        f = r["fixed"]
        spread = f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}"
        once = r.get("ratio_at_once", 1.0)
        once_spread = f"{r.get('ratio_at_once_min', 1):.2f}-{r.get('ratio_at_once_max', 1):.2f}"
        print(f"{label:32} {r['rps']:7.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
              f"{r['ratio']:6.2f} {spread:>11} {once:7.2f} {once_spread:>11} "
              f"{r['cpu_us']:10.0f} | {f['p50_ms']:10.2f} "
              f"{f['p99_ms']:6.2f} {f['max_ms']:6.1f} | {r['rss_end_mib']:8.1f}"
              + (f"  errors={r['errors'] + f['errors']}" if r["errors"] + f["errors"] else ""))
    print("\nratio: the median over rounds of req/s divided by allow-all's in the same round")
    print("at once: the median over rounds of allow-all's CPU per request divided by the "
          "server's,\n  both loaded at the same time on the server core (one core's "
          "throughput ratio, drift-free)")
    print("targets: >= 1500 req/s, p99 <= 10 ms at 500 req/s, RSS <= 200 MiB with 10,000 "
          "approvals")
    print("JSON " + json.dumps(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    parser.add_argument("--duration", type=int, default=3, help="seconds per server per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--fixed-seconds", type=int, default=10,
                        help="seconds of the fixed-rate latency run, per server")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--approvals", type=int, default=10_000)
    parser.add_argument("--cores", default="0,1", help="server core,client core")
    parser.add_argument("--quiet-variant", action="store_true",
                        help="also serve --static at --log-level warning (no audit line)")
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="also serve --static with the changegate package found in DIR")
    f = sub.add_parser("fake-api")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--approvals", type=int, required=True)
    f.add_argument("--state", required=True)
    c = sub.add_parser("rate-client")
    c.add_argument("--url", required=True)
    c.add_argument("--ca", required=True)
    c.add_argument("--rate", type=int, required=True)
    c.add_argument("--duration", type=int, required=True)
    c.add_argument("--connections", type=int, default=16)
    c.add_argument("--body", dest="bodies", action="append", required=True)
    opts = parser.parse_args()
    if opts.mode == "fake-api":
        fake_api(opts)
    elif opts.mode == "rate-client":
        fixed_rate_client(opts)
    else:
        return main_run(opts)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
