"""ChangeApprovals as the cache keeps them: everything decisions read, in less memory.

A cached approval as parsed JSON is ~13 KB of Python objects, most of it the manifest
(the proposed object, managedFields and all). 10,000 of them would be most of the
webhook's memory. The manifest is read for one thing only, `manifest_digest()`, and only
for an approval that otherwise admits the change (core.decision._find_approval). So:

- it is cut down to what core.digest.view() reads (`manifest_source`), which leaves every
  digest unchanged (tests/integration/test_cache.py proves it for the fixtures), and
- kept as zlib-compressed JSON inside `CompactSpec`, a read-only Mapping (the type
  `ApprovalObject.spec` declares) that hands out the manifest as a plain dict on access,
  from a small LRU so a hot approval is inflated once.
Short strings of the other fields are interned (shared across approvals).
"""

from __future__ import annotations

import functools
import sys
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from changegate.core.digest import DEFAULT_IGNORED_ANNOTATIONS, IGNORED_ANNOTATION_PREFIX
from changegate.core.snapshot import ApprovalObject

MANIFEST = "manifest"
SMALL_FIELDS = ("target", "changeRecord", "rollout")


def manifest_source(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest that core.digest.view() reads, and nothing else: apiVersion,
    kind, metadata.{namespace,name,labels,annotations}, spec (Deployment) or data/binaryData/
    immutable (ConfigMap). Annotations the digest always drops (the defaults, `changegate.io/*`)
    go as well, the last-applied copy above all."""
    meta = manifest.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    out: dict[str, Any] = {k: manifest[k] for k in ("apiVersion", "kind", "spec", "data",
                                                    "binaryData", "immutable") if k in manifest}
    small: dict[str, Any] = {k: meta[k] for k in ("namespace", "name", "labels") if k in meta}
    annotations = meta.get("annotations")
    if isinstance(annotations, dict):
        small["annotations"] = {
            k: v for k, v in annotations.items()
            if k not in DEFAULT_IGNORED_ANNOTATIONS and not str(k).startswith(
                IGNORED_ANNOTATION_PREFIX)}
    elif "annotations" in meta:
        small["annotations"] = annotations
    out["metadata"] = small
    return out


def interned(value: Any) -> Any:
    """Equal short strings shared across approvals ("apps/v1", "Deployment", "direct")."""
    if isinstance(value, dict):
        return {k: interned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interned(v) for v in value]
    if isinstance(value, str) and len(value) <= 64:
        return sys.intern(value)
    return value


@functools.lru_cache(maxsize=256)
def _inflate(blob: bytes) -> Any:
    # bytes cache their hash: a hit costs one dict lookup. The dict handed out is shared by
    # every caller; the core only reads it (view() copies what it trims).
    return orjson.loads(zlib.decompress(blob))


class CompactSpec(Mapping[str, Any]):
    """A ChangeApproval spec with its manifest compressed; reads like the dict it replaces."""

    __slots__ = ("_blob", "_fields")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        fields = {k: interned(v) if k in SMALL_FIELDS else v for k, v in spec.items()
                  if k != MANIFEST}
        manifest = spec.get(MANIFEST)
        self._blob: bytes | None = None
        if isinstance(manifest, dict):
            try:
                self._blob = zlib.compress(orjson.dumps(manifest_source(manifest)), 6)
            except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits: keep it whole
                fields[MANIFEST] = manifest
        elif MANIFEST in spec:
            fields[MANIFEST] = manifest  # not a dict: the core reports it as it is
        self._fields = fields

    def __getitem__(self, key: str) -> Any:
        if key == MANIFEST and self._blob is not None:
            return _inflate(self._blob)
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        yield from self._fields
        if self._blob is not None:
            yield MANIFEST

    def __len__(self) -> int:
        return len(self._fields) + (self._blob is not None)

    def __repr__(self) -> str:
        return f"CompactSpec({sorted(self)})"


def compact_approval(obj: Mapping[str, Any]) -> ApprovalObject:
    """What ApprovalObject.from_object makes, with a CompactSpec for the spec."""
    full = ApprovalObject.from_object(obj)
    if not isinstance(obj.get("spec"), dict):
        return full
    return ApprovalObject(namespace=full.namespace, name=full.name, uid=full.uid,
                          resource_version=full.resource_version, spec=CompactSpec(full.spec),
                          phase=full.phase)
