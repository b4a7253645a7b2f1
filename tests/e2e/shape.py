"""Structural differences between two AdmissionReview bodies (a fixture and a capture).

Reports keys present on one side only, values of different JSON types, lists of different
lengths, and differing leaf values except where the values differ naturally between any two
requests (uids, timestamps, resourceVersions, credential ids). The last-applied annotation is a
JSON document inside a string, so it is parsed and compared the same way, plus its formatting.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

# Paths (as rendered by _key) whose values say nothing about shape.
NATURAL = re.compile(
    r"""^\$\.request\.uid$
      | \.metadata\.(uid|creationTimestamp|resourceVersion)$
      | \.managedFields\[[^]]+\]\.time$
      | \.conditions\[[^]]+\]\.(lastUpdateTime|lastTransitionTime)$
      | \.userInfo\.uid$
      | \.userInfo\.extra\["[^"]*/(credential-id|pod-uid|node-uid)"\]\[\d+\]$
      | \.annotations\["kubectl\.kubernetes\.io/restartedAt"\]$
    """,
    re.X,
)


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f'{path}["{key}"]'


def _type(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}[type(v)]


def _identity(items: list[Any]) -> dict[str, Any] | None:
    """managedFields entries by manager/operation/subresource, conditions by type."""
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    if all("manager" in i for i in items):
        keys = [f"{i['manager']}/{i.get('operation')}/{i.get('subresource', '')}" for i in items]
    elif all("type" in i for i in items):
        keys = [f"type={i['type']}" for i in items]
    else:
        return None
    return dict(zip(keys, items, strict=True)) if len(set(keys)) == len(keys) else None


def _short(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 120 else text[:117] + "..."


def differences(fixture: Any, real: Any, path: str = "$") -> Iterator[tuple[str, str]]:
    """Yield (kind, message) with kind "shape" or "value"."""
    if _type(fixture) != _type(real):
        yield "shape", f"{path}: {_type(fixture)} in fixture, {_type(real)} in real"
        return
    if isinstance(fixture, dict):
        for k in fixture.keys() - real.keys():
            yield "shape", f"{_key(path, k)}: only in fixture ({_short(fixture[k])})"
        for k in real.keys() - fixture.keys():
            yield "shape", f"{_key(path, k)}: only in real ({_short(real[k])})"
        for k in fixture.keys() & real.keys():
            yield from differences(fixture[k], real[k], _key(path, k))
    elif isinstance(fixture, list) and _identity(fixture) and _identity(real):
        # Matched by identity, not position: the API server orders managedFields entries
        # with equal (1 s resolution) times differently from one request to the next.
        a, b = _identity(fixture), _identity(real)
        for k in sorted(a.keys() - b.keys()):
            yield "shape", f"{path}[{k}]: only in fixture"
        for k in sorted(b.keys() - a.keys()):
            yield "shape", f"{path}[{k}]: only in real"
        for k in sorted(a.keys() & b.keys()):
            yield from differences(a[k], b[k], f"{path}[{k}]")
    elif isinstance(fixture, list):
        if len(fixture) != len(real):
            yield "shape", f"{path}: {len(fixture)} items in fixture, {len(real)} in real"
        for i, (a, b) in enumerate(zip(fixture, real, strict=False)):
            yield from differences(a, b, f"{path}[{i}]")
    elif path.endswith(f'["{LAST_APPLIED}"]'):
        if (fixture.count(": "), fixture.endswith("\n")) != (real.count(": "), real.endswith("\n")):
            yield "value", f"{path}: formatted differently ({_short(fixture[:40])} vs " \
                           f"{_short(real[:40])})"
        yield from differences(json.loads(fixture), json.loads(real), path + "<json>")
    elif fixture != real and not NATURAL.search(path):
        yield "value", f"{path}: {_short(fixture)} in fixture, {_short(real)} in real"


def report(fixture: Any, real: Any) -> list[str]:
    """Sorted lines: shape differences first, then values."""
    found = sorted(differences(fixture, real), key=lambda d: (d[0] != "shape", d[1]))
    return [f"{kind:5}  {message}" for kind, message in found]
