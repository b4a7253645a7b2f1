"""The only module that builds Kubernetes clients (sync for the CLI, kubernetes.aio for the
webhook cache and the operator). Configuration the way kubectl finds it: --kubeconfig,
--context, $KUBECONFIG, ~/.kube/config, else in-cluster.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from changegate.core.errors import ChangeGateError
from changegate.core.names import GROUP as GROUP
from changegate.core.names import PLURAL as PLURAL
from changegate.core.names import VERSION as VERSION

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _kubeconfig_path(kubeconfig: str | None) -> str | None:
    if kubeconfig:
        return kubeconfig
    env = os.environ.get("KUBECONFIG")
    if env:
        return env.split(os.pathsep)[0]
    default = Path.home() / ".kube" / "config"
    return str(default) if default.exists() else None


def _must_exist(path: str | None) -> None:
    if path is not None and not Path(path).exists():
        raise ChangeGateError(f"kubeconfig {path}: no such file")


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig context (kubectl's default), else `default`."""
    from kubernetes.config import list_kube_config_contexts
    from kubernetes.config.config_exception import ConfigException

    path = _kubeconfig_path(kubeconfig)
    if path is None:
        if SERVICE_ACCOUNT_NAMESPACE.exists():
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
        return "default"
    try:
        contexts, active = list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=path)
    except (ConfigException, OSError, ValueError):
        return "default"  # sync_client reports the real problem with the kubeconfig
    chosen = active
    if context:
        chosen = next((c for c in contexts if c.get("name") == context), active)
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else "default"


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def sync_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A `kubernetes.client.ApiClient`. Raises ChangeGateError with one readable line."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    path = _kubeconfig_path(kubeconfig)
    _must_exist(path)
    configuration = client.Configuration()
    try:
        if path is None and _in_cluster():
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
        elif path is None:
            raise ChangeGateError("no kubeconfig: set KUBECONFIG or pass --kubeconfig")
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, context=context, client_configuration=configuration)
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
    _must_exist(path)
    configuration = client.Configuration()
    try:
        if path is None and _in_cluster():
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
        elif path is None:
            raise ChangeGateError("no kubeconfig: set KUBECONFIG or run in a cluster")
        else:
            await config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, context=context, client_configuration=configuration)
    except ConfigException as exc:
        raise ChangeGateError(f"kubeconfig: {exc}") from exc
    return client.ApiClient(configuration)
