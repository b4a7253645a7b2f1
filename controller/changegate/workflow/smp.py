"""What `kubectl apply` (client-side) sends: a three-way strategic merge patch.

kubectl computes ``CreateThreeWayMergePatch(original, modified, current)`` where
``original`` is the live object's last-applied annotation, ``modified`` the new config
carrying its own last-applied annotation, and ``current`` the live object; the patch is
the changes and additions from current to modified, plus the deletions from original to
modified (k8s.io/apimachinery/pkg/util/strategicpatch/patch.go). This is that algorithm
for the two gated kinds, with their patch metadata (merge keys, retainKeys) taken from
the Go struct tags of apps/v1 Deployment and core/v1 PodSpec. Lists not named here are
atomic (replaced whole), as they are for kubectl.

Only the stored object has to match what kubectl produces, not the patch bytes: the e2e
test compares this against the real `kubectl apply --dry-run=server`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeGuard

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
RETAIN_KEYS = "$retainKeys"
SET_ORDER = "$setElementOrder/"
PATCH = "$patch"
# Go's encoding/json escapes these for HTML safety; kubectl's annotation carries them so.
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
               "\u2029": "\\u2029"}

# Paths use "*" for "every item of the list above". (strategy, merge key, retainKeys items)
_CONTAINER_LISTS = {
    "env": "name", "ports": "containerPort", "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
}
_POD_LISTS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "imagePullSecrets": "name", "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
    "schedulingGates": "name", "volumes": "name", "resourceClaims": "name",
}
_RETAIN_ITEMS = {"volumes", "resourceClaims"}  # patchStrategy:"merge,retainKeys"


def _merge_lists() -> dict[tuple[str, ...], str]:
    lists: dict[tuple[str, ...], str] = {("metadata", "ownerReferences"): "uid"}
    for pod in (("spec", "template", "spec"),):
        for name, key in _POD_LISTS.items():
            lists[(*pod, name)] = key
        for containers in ("containers", "initContainers", "ephemeralContainers"):
            for name, key in _CONTAINER_LISTS.items():
                lists[(*pod, containers, "*", name)] = key
    return lists


MERGE_LISTS = _merge_lists()
RETAIN_MAPS = frozenset({("spec", "strategy")} | {
    ("spec", "template", "spec", name, "*") for name in _RETAIN_ITEMS})


def _is_map(value: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict)


def _same_type(a: Any, b: Any) -> bool:
    # Go decodes JSON numbers as int64 or float64; bool is no number there.
    def kind(v: Any) -> str:
        if isinstance(v, bool):
            return "bool"
        if isinstance(v, int | float):
            return "number"
        return type(v).__name__
    return kind(a) == kind(b)


def diff_maps(original: Mapping[str, Any], modified: Mapping[str, Any], path: tuple[str, ...],
              *, ignore_deletions: bool = False, ignore_changes: bool = False) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for key, mod in modified.items():
        if key not in original:
            if not ignore_changes:
                patch[key] = mod
            continue
        orig = original[key]
        if not _same_type(orig, mod):
            if not ignore_changes:
                patch[key] = mod
            continue
        sub_path = (*path, key)
        if _is_map(mod):
            sub = diff_maps(orig, mod, sub_path, ignore_deletions=ignore_deletions,
                            ignore_changes=ignore_changes)
            if sub_path in RETAIN_MAPS:
                _retain_keys(orig, mod, sub)
            if sub:
                patch[key] = sub
        elif isinstance(mod, list) and sub_path in MERGE_LISTS:
            _diff_list(key, orig, mod, sub_path, patch, ignore_deletions, ignore_changes)
        elif orig != mod and not ignore_changes:
            patch[key] = mod
    if not ignore_deletions:
        for key in original:
            if key not in modified:
                patch[key] = None
    return patch


def _retain_keys(orig: Mapping[str, Any], mod: Mapping[str, Any], sub: dict[str, Any]) -> None:
    """kubectl lists the keys to keep when the map changed or lost a key (patch.go diffMaps)."""
    keep = sorted(k for k, v in mod.items() if v is not None)
    if keep and (sub or any(k not in mod for k in orig)):
        sub[RETAIN_KEYS] = keep


def _diff_list(key: str, orig: list[Any], mod: list[Any], path: tuple[str, ...],
               patch: dict[str, Any], ignore_deletions: bool, ignore_changes: bool) -> None:
    merge_key = MERGE_LISTS[path]
    if not orig:
        if mod and not ignore_changes:
            patch[key] = mod
        return
    if not all(_is_map(i) and merge_key in i for i in (*orig, *mod)):
        if orig != mod and not ignore_changes:
            patch[key] = mod  # not a list of keyed maps after all: replace it whole
        return
    by_key = {json.dumps(i[merge_key]): i for i in orig}
    mod_keys = {json.dumps(i[merge_key]) for i in mod}
    item_path = (*path, "*")
    changes: list[Any] = []
    for item in mod:
        old = by_key.get(json.dumps(item[merge_key]))
        if old is None:
            if not ignore_changes:
                changes.append(item)
            continue
        sub = diff_maps(old, item, item_path, ignore_deletions=ignore_deletions,
                        ignore_changes=ignore_changes)
        if item_path in RETAIN_MAPS:
            _retain_keys(old, item, sub)
        if sub:
            changes.append({merge_key: item[merge_key], **sub})
    if not ignore_deletions:
        changes.extend({merge_key: i[merge_key], PATCH: "delete"} for i in orig
                       if json.dumps(i[merge_key]) not in mod_keys)
    same_order = [json.dumps(i[merge_key]) for i in orig if json.dumps(i[merge_key]) in mod_keys
                  ] == [json.dumps(i[merge_key]) for i in mod if json.dumps(i[merge_key]) in by_key]
    if changes:
        patch[key] = changes
    if changes or (not ignore_changes and not same_order):
        patch[SET_ORDER + key] = [{merge_key: i[merge_key]} for i in mod]


def merge_patches(base: dict[str, Any], over: Mapping[str, Any], path: tuple[str, ...] = ()
                  ) -> dict[str, Any]:
    """Deletions patch + delta patch -> one patch (what mergeMap does in kubectl)."""
    out = dict(base)
    for key, value in over.items():
        sub_path = (*path, key)
        mine = out.get(key)
        if _is_map(mine) and _is_map(value):
            out[key] = merge_patches(mine, value, sub_path)
        elif isinstance(mine, list) and isinstance(value, list) and sub_path in MERGE_LISTS:
            merge_key = MERGE_LISTS[sub_path]
            items = {json.dumps(i.get(merge_key)): i for i in mine if _is_map(i)}
            for item in value:
                k = json.dumps(item.get(merge_key)) if _is_map(item) else None
                if k is not None and k in items and _is_map(item):
                    items[k] = merge_patches(items[k], item, (*sub_path, "*"))
                elif k is not None:
                    items[k] = item
            out[key] = list(items.values())
        else:
            out[key] = value
    return out


def last_applied(config: Mapping[str, Any]) -> str:
    """The annotation value kubectl writes: the config as compact JSON, sorted keys, newline
    (Go's encoding/json of a map), without the annotation itself."""
    clean = json.loads(json.dumps(config))
    meta = clean.setdefault("metadata", {})
    # kubectl always writes the annotations map, empty when the config had none.
    annotations = dict(meta.get("annotations") or {})
    annotations.pop(LAST_APPLIED, None)
    meta["annotations"] = annotations
    text = json.dumps(clean, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in _GO_ESCAPES.items():  # these occur only inside JSON strings
        text = text.replace(char, escaped)
    return text + "\n"


def with_last_applied(config: Mapping[str, Any]) -> dict[str, Any]:
    """``modified`` in kubectl's terms: the config carrying its own last-applied annotation."""
    out = json.loads(json.dumps(config))
    meta = out.setdefault("metadata", {})
    annotations = meta.get("annotations") or {}
    meta["annotations"] = {**annotations, LAST_APPLIED: last_applied(config)}
    return dict(out)


def client_side_apply_patch(config: Mapping[str, Any], live: Mapping[str, Any]
                            ) -> dict[str, Any]:
    """The strategic merge patch `kubectl apply -f` sends for ``config`` onto ``live``."""
    modified = with_last_applied(config)
    raw = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    try:
        original = json.loads(raw) if raw else {}
    except ValueError:
        original = {}
    if not isinstance(original, dict):
        original = {}
    delta = diff_maps(live, modified, (), ignore_deletions=True)
    deletions = diff_maps(original, modified, (), ignore_changes=True)
    return merge_patches(deletions, delta)
