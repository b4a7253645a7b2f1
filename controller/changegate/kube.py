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
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _kubeconfig_path(kubeconfig: str | None) -> str | None:
    """One file (--kubeconfig, ~/.kube/config) or $KUBECONFIG's whole list: the `kubernetes`
    loaders merge a list (KubeConfigMerger) the way kubectl does, skipping missing files and
    keeping the first file's entry for each cluster, user and context name."""
    if kubeconfig:
        return kubeconfig
    env = os.environ.get("KUBECONFIG")
    if env:
        return env
    default = Path.home() / ".kube" / "config"
    return str(default) if default.exists() else None


def _must_exist(path: str | None) -> None:
    if path is None:
        return
    files = [p for p in path.split(os.pathsep) if p]
    if not any(Path(p).expanduser().exists() for p in files):
        raise ChangeGateError(f"kubeconfig {path}: no such file")


def _active_context(path: str | None, context: str | None) -> str | None:
    """--context, else kubectl's current-context: the FIRST file that sets one wins (the
    `kubernetes` merger lets the last one win, so the CLI names the context itself)."""
    if context or path is None:
        return context
    import yaml

    for name in path.split(os.pathsep):
        file = Path(name).expanduser()
        if not name or not file.is_file():
            continue
        try:
            doc = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return None  # the loader reports what is wrong with the file
        current = doc.get("current-context") if isinstance(doc, dict) else None
        if current:
            return str(current)
    return None


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
    context = _active_context(path, context)
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
                config_file=path, context=_active_context(path, context),
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
                config_file=path, context=_active_context(path, context),
                client_configuration=configuration)
    except ConfigException as exc:
        raise ChangeGateError(f"kubeconfig: {exc}") from exc
    return client.ApiClient(configuration)
