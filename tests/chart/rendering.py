"""Render the chart offline with the Helm v4 SDK (helm-python-sdk, no helm binary)."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "changegate"
RELEASE = "changegate"
NAMESPACE = "changegate"
KUBE_VERSION = "1.37.0"

# What the chart refuses to install without (SPEC §11), and nothing else.
REQUIRED: dict[str, Any] = {
    "policy": {
        "clusterName": "prod-eu-1",
        "policyAdminGroups": ["platform-admins"],
        "breakGlassGroups": ["sre-oncall"],
    }
}


CI_VALUES_NAMES = sorted(p.name for p in CHART.glob("ci/*-values.yaml"))


def ci_values() -> dict[str, dict[str, Any]]:
    """Every charts/changegate/ci/*-values.yaml by file name (one per install mode)."""
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(CHART.glob("ci/*-values.yaml"))}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge values layers, later ones winning (like repeated -f flags)."""
    out: dict[str, Any] = {}
    for layer in layers:
        _merge_into(out, copy.deepcopy(layer))
    return out


def _merge_into(base: dict[str, Any], top: dict[str, Any]) -> None:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_into(base[key], value)
        else:
            base[key] = value


@functools.cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(
    values: dict[str, Any] | None = None,
    *,
    upgrade: bool = False,
    api_versions: tuple[str, ...] = (),
) -> dict[str, str]:
    """Template path -> rendered text, as `helm install` (or upgrade) would render it.

    helm-python-sdk 0.2.2's Chart.render() has no way to pass the cluster's API versions;
    libhelm_c's helm_render accepts them (`api_versions`, like `helm template
    --api-versions`), so that one case goes to the native call directly.
    """
    chart = _chart()
    if not api_versions:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE,
                            is_install=not upgrade, is_upgrade=upgrade)
    opts = {"name": RELEASE, "namespace": NAMESPACE, "is_install": not upgrade,
            "is_upgrade": upgrade, "api_versions": list(api_versions)}
    text = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts))
    rendered: dict[str, str] = json.loads(text)
    return rendered


def objects(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders (NOTES.txt and empty documents left out)."""
    docs = []
    for path, text in sorted(render(values, **kwargs).items()):
        if not path.endswith(".yaml"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def notes(values: dict[str, Any] | None = None, **kwargs: Any) -> str:
    return render(values, **kwargs)[f"{CHART.name}/templates/NOTES.txt"]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single object of this kind (and name)."""
    found = [o for o in objs
             if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(objs: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objs}


def webhooks(values: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, dict[str, Any]]:
    """The ValidatingWebhookConfiguration's entries by name."""
    vwc = one(objects(values, **kwargs), "ValidatingWebhookConfiguration")
    return {w["name"]: w for w in vwc["webhooks"]}


def config_map_data(objs: list[dict[str, Any]], name: str, key: str) -> Any:
    return yaml.safe_load(one(objs, "ConfigMap", name)["data"][key])
