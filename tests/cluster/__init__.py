"""A real Kubernetes control plane (etcd + kube-apiserver, built from pinned Go modules) for
the e2e tests; see README.md."""

from .cluster import (
    GITOPS,
    GITOPS_USER,
    USERS,
    Cluster,
    ExternalCluster,
    GoMissing,
    ensure_binaries,
    free_port,
)
from .webhooks import probe_configmap, register_webhook, unregister_webhook, webhook_calls

__all__ = [
    "GITOPS",
    "GITOPS_USER",
    "USERS",
    "Cluster",
    "ExternalCluster",
    "GoMissing",
    "ensure_binaries",
    "free_port",
    "probe_configmap",
    "register_webhook",
    "unregister_webhook",
    "webhook_calls",
]
