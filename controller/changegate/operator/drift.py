"""Drift of the chart's ValidatingWebhookConfiguration (SPEC §7a, §8).

The chart renders the configuration's entries twice: into the object itself, and into
the ``webhooks.yaml`` key of ``changegate-config`` (which the config guard protects and
the operator mounts). The operator compares what the API server holds with that
rendering and sets ``changegate_webhook_config_drift`` to 1 while they differ: an entry
missing or added, or any entry's rules, failurePolicy, namespace or object selector,
matchConditions or caBundle changed. ``changegate emergency-off`` (failurePolicy Ignore)
is drift on purpose, so it pages until ``emergency-on``; the configuration deleted is
drift too.

Fields the API server defaults are compared with their defaults filled in (an empty
selector, no matchConditions, ``scope: "*"``, ``failurePolicy: Fail``), so an object
applied from the rendering matches it. A caBundle the rendering leaves out (cert-manager
injects it at run time) is only required to be there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import yaml

LOG = logging.getLogger("changegate.operator.drift")
NAME = "changegate"  # the chart's ValidatingWebhookConfiguration


def load_expected(text: str) -> list[dict[str, Any]]:
    """The chart's rendered entries (a YAML list); raises ValueError when it is not one."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(doc, list) or not all(isinstance(e, dict) and e.get("name")
                                            for e in doc):
        raise ValueError("expected a YAML list of webhook entries, each with a name")
    return doc


def _selector(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if v not in (None, [], {})}


def _rules(value: Any) -> list[dict[str, Any]]:
    return [{**r, "scope": r.get("scope") or "*"} for r in value or [] if isinstance(r, dict)]


def _entry(e: Mapping[str, Any]) -> dict[str, Any]:
    return {"rules": _rules(e.get("rules")),
            "failurePolicy": e.get("failurePolicy") or "Fail",
            "namespaceSelector": _selector(e.get("namespaceSelector")),
            "objectSelector": _selector(e.get("objectSelector")),
            "matchConditions": list(e.get("matchConditions") or [])}


def differences(expected: list[dict[str, Any]], live: Mapping[str, Any] | None) -> list[str]:
    """What differs, one line each; [] when the live configuration matches."""
    if live is None:
        return [f"ValidatingWebhookConfiguration {NAME} is missing"]
    have = {str(e.get("name")): e for e in live.get("webhooks") or [] if isinstance(e, dict)}
    want = {str(e["name"]): e for e in expected}
    out = [f"entry {n} is missing" for n in sorted(set(want) - set(have))]
    out += [f"entry {n} is not the chart's" for n in sorted(set(have) - set(want))]
    for name in sorted(set(want) & set(have)):
        w, h = _entry(want[name]), _entry(have[name])
        out += [f"{name}: {field} differs" for field in w if w[field] != h[field]]
        w_ca = (want[name].get("clientConfig") or {}).get("caBundle")
        h_ca = (have[name].get("clientConfig") or {}).get("caBundle")
        if (w_ca and w_ca != h_ca) or not h_ca:
            out.append(f"{name}: caBundle differs")
    return out


def judge(ctx: Any, live: Mapping[str, Any] | None) -> None:
    """Set the gauge from the live configuration (None: deleted); log when it changes."""
    if ctx.expected_webhooks is None:
        return
    found = differences(ctx.expected_webhooks, live)
    was = ctx.metrics.drift_lines
    ctx.metrics.drift.set(1 if found else 0)
    ctx.metrics.drift_lines = found
    if found and found != was:
        LOG.warning("webhook configuration drifted from the chart's: %s", "; ".join(found))
    elif was and not found:
        LOG.info("webhook configuration matches the chart's again")
