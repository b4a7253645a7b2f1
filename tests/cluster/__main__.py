"""`python -m tests.cluster up [--controller-manager] [--nodes N]`: run the test control plane
in the foreground until Ctrl-C or SIGTERM, for poking at it with kubectl (and helm)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .cluster import Cluster, GoMissing, export_lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start etcd + kube-apiserver on 127.0.0.1 and wait")
    up.add_argument("--controller-manager", action="store_true",
                    help="also run kube-controller-manager (Deployments get ReplicaSets/Pods)")
    up.add_argument("--nodes", type=int, default=0, metavar="N",
                    help="also N fake nodes (kwok + kube-scheduler; implies --controller-manager)"
                         ": Pods run and become Ready")
    up.add_argument("--workdir", type=Path,
                    help="keep certs, kubeconfigs, logs and etcd data here (kept on exit)")
    args = parser.parse_args(argv)

    # SIGTERM takes the same path as Ctrl-C, so `finally` stops the servers either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cluster = Cluster(controller_manager=args.controller_manager, workdir=args.workdir,
                      nodes=args.nodes)
    try:
        cluster.start()
        print(f"# control plane up at {cluster.url} in {cluster.startup_seconds:.1f} s; "
              f"logs in {cluster.workdir}", flush=True)
        for line in export_lines(cluster):
            print(line, flush=True)
        if cluster.fake_nodes:
            print(f"# fake nodes (kwok): {' '.join(cluster.fake_nodes)}", flush=True)
        print(f"# helm: {cluster.helm_bin} --kubeconfig {cluster.admin_kubeconfig}", flush=True)
        print("# Ctrl-C to stop", flush=True)
        signal.pause()
    except GoMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("# stopping", file=sys.stderr)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
