"""The only module that builds Kubernetes clients (sync for the CLI, kubernetes.aio for the
webhook cache and the operator). Configuration the way kubectl finds it: --kubeconfig,
--context, $KUBECONFIG, ~/.kube/config, else in-cluster.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from changegate.core.errors import ChangeGateError

GROUP, VERSION, PLURAL = "changegate.io", "v1alpha1", "changeapprovals"


def _kubeconfig_path(kubeconfig: str | None) -> str | None:
    if kubeconfig:
        return kubeconfig
    env = os.environ.get("KUBECONFIG")
    if env:
        return env.split(os.pathsep)[0]
    default = Path.home() / ".kube" / "config"
    return str(default) if default.exists() else None


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def sync_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A `kubernetes.client.ApiClient`. Raises ChangeGateError with one readable line."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    path = _kubeconfig_path(kubeconfig)
    configuration = client.Configuration()
    try:
        if path is None and _in_cluster():
            config.load_incluster_config(client_configuration=configuration)
        elif path is None:
            raise ChangeGateError("no kubeconfig: set KUBECONFIG or pass --kubeconfig")
        else:
            config.load_kube_config(config_file=path, context=context,
                                    client_configuration=configuration)
    except ConfigException as exc:
        raise ChangeGateError(f"kubeconfig: {exc}") from exc
    except FileNotFoundError as exc:
        raise ChangeGateError(f"kubeconfig {path}: no such file") from exc
    return client.ApiClient(configuration)


async def async_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A `kubernetes.aio.client.ApiClient` (in-cluster when no kubeconfig is found)."""
    from kubernetes.aio import client, config
    from kubernetes.aio.config.config_exception import ConfigException

    path = _kubeconfig_path(kubeconfig)
    configuration = client.Configuration()
    try:
        if path is None and _in_cluster():
            config.load_incluster_config(client_configuration=configuration)
        elif path is None:
            raise ChangeGateError("no kubeconfig: set KUBECONFIG or run in a cluster")
        else:
            await config.load_kube_config(config_file=path, context=context,
                                          client_configuration=configuration)
    except ConfigException as exc:
        raise ChangeGateError(f"kubeconfig: {exc}") from exc
    return client.ApiClient(configuration)
