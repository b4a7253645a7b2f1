"""The change digest ``k8s-desired-state/v1`` (SPEC §3).

The digest covers what an object asks the cluster to run: a view with apiVersion, kind,
namespace, name, non-ignored labels and annotations, and the spec (Deployment) or data
(ConfigMap). Everything the API server or controllers stamp (uid, resourceVersion,
managedFields, status, ...) stays out, so a requester's server-side dry-run and the
webhook's request compute the same bytes.

Canonical JSON is RFC 8785. The ``rfc8785`` package is the reference; it costs ~0.2 ms
for a small Deployment and ~1 ms for a 7 KB one, and the webhook computes two digests per
request. ``orjson`` with sorted keys produces the same bytes whenever every key is ASCII
(so code-point order equals RFC 8785's UTF-16 order) and every number is an integer
inside +-(2**53 - 1) (so number formatting cannot differ): the fast path takes exactly
those views and falls back to the reference otherwise. tests/unit/test_digest_props.py
proves the two equal on generated views.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import rfc8785

from changegate.core.errors import NotCanonicalError

ABSENT = "none"
MAX_SAFE_INTEGER = 2**53 - 1

DEFAULT_IGNORED_ANNOTATIONS: frozenset[str] = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        "deployment.kubernetes.io/revision",
        "argocd.argoproj.io/tracking-id",
        "meta.helm.sh/release-name",
        "meta.helm.sh/release-namespace",
    }
)
IGNORED_ANNOTATION_PREFIX = "changegate.io/"
DEFAULT_IGNORED_LABELS: frozenset[str] = frozenset(
    {
        "app.kubernetes.io/managed-by",
        "argocd.argoproj.io/instance",
        "kustomize.toolkit.fluxcd.io/name",
        "kustomize.toolkit.fluxcd.io/namespace",
        "helm.toolkit.fluxcd.io/name",
        "helm.toolkit.fluxcd.io/namespace",
    }
)


class ViewRules:
    """What the policy adds to the defaults of SPEC §3."""

    __slots__ = ("ignored_annotations", "ignored_labels")

    def __init__(
        self, ignored_annotations: Iterable[str] = (), ignored_labels: Iterable[str] = ()
    ) -> None:
        self.ignored_annotations = DEFAULT_IGNORED_ANNOTATIONS | frozenset(ignored_annotations)
        self.ignored_labels = DEFAULT_IGNORED_LABELS | frozenset(ignored_labels)

    def keeps_annotation(self, key: str) -> bool:
        return key not in self.ignored_annotations and not key.startswith(
            IGNORED_ANNOTATION_PREFIX
        )


DEFAULT_RULES = ViewRules()


def _str_map(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping (read, never written), else an empty one."""
    if type(value) is dict or isinstance(value, Mapping):  # exact type first: ABCs are slow
        return value
    return {}


def view(obj: Mapping[str, Any], rules: ViewRules = DEFAULT_RULES, *, autoscaled: bool = False
         ) -> dict[str, Any]:
    """The SPEC §3 view of a Deployment or ConfigMap, nulls not yet removed."""
    meta = _str_map(obj.get("metadata"))
    labels = {k: v for k, v in _str_map(meta.get("labels")).items()
              if k not in rules.ignored_labels}
    annotations = {k: v for k, v in _str_map(meta.get("annotations")).items()
                   if rules.keeps_annotation(k)}
    out: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "labels": labels,
            "annotations": annotations,
        },
    }
    if obj.get("kind") == "ConfigMap":
        out["data"] = obj.get("data") or {}
        out["binaryData"] = obj.get("binaryData") or {}
        out["immutable"] = obj.get("immutable") or False
    else:
        spec = _str_map(obj.get("spec"))
        if autoscaled:
            spec = {k: v for k, v in spec.items() if k != "replicas"}
        out["spec"] = spec  # not copied: the canonical walk copies what it keeps
    return out


def _out_of_range(value: int) -> NotCanonicalError:
    return NotCanonicalError(
        f"the object holds the integer {value}, outside +-(2^53-1): it has no "
        "RFC 8785 form, so no approval can name it")


def _prune_dict(value: dict[Any, Any]) -> tuple[dict[Any, Any], bool]:
    """Drop null-valued keys at every depth; also tell whether every leaf is a plain str,
    int or bool (no float, no subclass), so that orjson's output can be RFC 8785.

    Hot path (once per admission): leaves are handled inline by exact type, because a
    call per leaf cost more than the rest of the walk. Keys are checked on the output
    (one isascii() on the bytes, not one per key).
    """
    out: dict[Any, Any] = {}
    plain = True
    for key, item in value.items():
        kind = type(item)
        if kind is str or kind is bool:
            out[key] = item
        elif kind is dict:
            out[key], item_plain = _prune_dict(item)
            plain = plain and item_plain
        elif kind is list:
            out[key], item_plain = _prune_list(item)
            plain = plain and item_plain
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise _out_of_range(item)
            out[key] = item
        elif item is not None:
            out[key], item_plain = _prune(item)
            plain = plain and item_plain
    return out, plain


def _prune_list(value: list[Any]) -> tuple[list[Any], bool]:
    out: list[Any] = []
    plain = True
    for item in value:
        kind = type(item)
        if kind is str or kind is bool or item is None:
            out.append(item)  # null stays in arrays: only null-valued *keys* are removed
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise _out_of_range(item)
            out.append(item)
        else:
            pruned, item_plain = _prune(item)
            out.append(pruned)
            plain = plain and item_plain
    return out, plain


def _prune(value: Any) -> tuple[Any, bool]:
    """The general case (subclasses, floats, anything unusual): the reference decides."""
    if type(value) is dict:
        return _prune_dict(value)
    if type(value) is list:
        return _prune_list(value)
    if isinstance(value, Mapping):  # a dict subclass, a read-only view: same JSON
        return _prune_dict(dict(value))
    if isinstance(value, list):
        return _prune_list(list(value))
    if isinstance(value, int) and not isinstance(value, bool) and not (
            -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER):
        raise _out_of_range(value)
    return value, type(value) in (bool, str, int, type(None))


def _ascii_keys(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and k.isascii() and _ascii_keys(v)
                   for k, v in value.items())
    if isinstance(value, list):
        return all(_ascii_keys(v) for v in value)
    return True


def canonical_reference(value: Any) -> bytes:
    """RFC 8785 by the reference implementation; nulls already pruned."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        raise NotCanonicalError(f"the object has no RFC 8785 form: {exc}") from exc


def canonical(value: Any) -> bytes:
    """RFC 8785 canonical JSON of ``value`` after removing null-valued keys."""
    pruned, plain = _prune(value)
    if plain:
        try:
            out = orjson.dumps(pruned, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            out = b""  # a key that is no string, a lone surrogate: the reference explains
        # Sorted keys equal RFC 8785's UTF-16 order when every key is ASCII; all-ASCII
        # output proves that at once, else (UTF-8 data, say) the keys are looked at.
        if out and (out.isascii() or _ascii_keys(pruned)):
            return out
    return canonical_reference(pruned)


def digest_of_view(v: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical(v)).hexdigest()


def digest(obj: Mapping[str, Any] | None, rules: ViewRules = DEFAULT_RULES, *,
           autoscaled: bool = False) -> str:
    """``sha256:<hex>`` of the object's view, or ``none`` for an absent object."""
    if obj is None:
        return ABSENT
    return digest_of_view(view(obj, rules, autoscaled=autoscaled))


def hex_of(digest_value: str) -> str:
    """The hex part of ``sha256:<hex>`` (what an in-toto subject carries)."""
    return digest_value.removeprefix("sha256:")
