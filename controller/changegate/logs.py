"""Logging: one JSON object per line, and the one audit record per admission decision.

The audit record says who did what, to which digests, under which approval and record,
and why it was decided so. It never carries secrets: no object bodies (a ConfigMap's data
may be one), no statements or signatures, no `userInfo.extra` (it holds credential ids).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
import yaml

from changegate.core.audit import audit_record
from changegate.core.review import AdmissionRequest
from changegate.core.verdict import Decision

AUDIT = logging.getLogger("changegate.audit")
_STD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def timestamp(created: float) -> str:
    """RFC 3339 in UTC with milliseconds: `2026-12-02T15:29:26.123Z`."""
    millis = int(created % 1 * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(created))}.{millis:03d}Z"


class JSONFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...extra}`; fields given via `extra={"fields": {}}`
    are merged at the top level so log tools can index them."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        else:
            for key, value in vars(record).items():
                if key not in _STD_ATTRS:
                    doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup(level: str = "info", stream: Any = None) -> None:
    """One JSON line per record on `stream` (stderr). The StreamHandler writes and flushes
    each record as it is logged: an audit record is out of the process before the webhook
    sends the answer it records, so a crash cannot lose it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log would add a second, unstructured line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def audit_fields(decision: Decision, request: AdmissionRequest | None, *, uid: str,
                 seconds: float) -> dict[str, Any]:
    fields = audit_record(decision, request, uid=uid, seconds=seconds)
    if decision.config_change is not None and request is not None:
        fields.update(config_diff(request))  # parses YAML: here, not in the core
    return fields


def _data(obj: dict[str, Any] | None) -> dict[str, Any]:
    data = (obj or {}).get("data")
    return data if isinstance(data, dict) else {}


def _yaml_top(text: Any, key: str | None) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text) if isinstance(text, str) else None
    except yaml.YAMLError:
        return {}
    if key is None:
        return doc if isinstance(doc, dict) else {}
    items = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return {}
    return {str(e.get("name")): e for e in items if isinstance(e, dict)}


def config_diff(request: AdmissionRequest) -> dict[str, Any]:
    """What a config-guard change changes, by name only (SPEC §5: logged with what changed):
    data keys (ledger nonces), approvers (trust store), top-level settings (policy)."""
    new, old = _data(request.object), _data(request.old_object)
    out: dict[str, Any] = {"changedKeys": sorted(k for k in set(new) | set(old)
                                                 if new.get(k) != old.get(k))}
    if "approvers.yaml" in new or "approvers.yaml" in old:
        a, b = (_yaml_top(d.get("approvers.yaml"), "approvers") for d in (old, new))
        out["approversAdded"] = sorted(set(b) - set(a))
        out["approversRemoved"] = sorted(set(a) - set(b))
        out["approversChanged"] = sorted(n for n in set(a) & set(b) if a[n] != b[n])
    if "policy.yaml" in new or "policy.yaml" in old:
        a, b = (_yaml_top(d.get("policy.yaml"), None) for d in (old, new))
        out["settingsChanged"] = sorted(str(k) for k in set(a) | set(b) if a.get(k) != b.get(k))
    return out


def audit(decision: Decision, request: AdmissionRequest | None, *, uid: str,
          seconds: float) -> None:
    """Log the decision's audit record; written and flushed when this returns (see setup)."""
    if AUDIT.isEnabledFor(logging.INFO):
        AUDIT.info("admission", extra={"fields": audit_fields(decision, request, uid=uid,
                                                              seconds=seconds)})
