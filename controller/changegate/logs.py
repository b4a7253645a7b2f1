"""Logging: one JSON object per line, and the one audit record per admission decision.

The audit record says who did what, to which digests, under which approval and record,
and why it was decided so. It never carries secrets: no object bodies (a ConfigMap's data
may be one), no statements or signatures, no `userInfo.extra` (it holds credential ids).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
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


_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]  # a table: formatting them cost ~0.5 us


class JSONFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...extra}`; fields given via `extra={"fields": {}}`
    are merged at the top level so log tools can index them."""

    _second = -1
    _stamp = ""

    def stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # one strftime per second, not per line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._stamp + _MILLIS[int((created - second) * 1000)]

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)  # our own records carry everything here: no attribute scan
        else:
            for key, value in vars(record).items():
                if key not in _STD_ATTRS:
                    doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class _AuditLine:
    """The audit record written straight to the log stream, same JSON shape as every other
    line. At ~2,000 decisions/s the logging module's record, handler and formatter, and one
    write(2) per line, were 10 % of a request's CPU. Lines are buffered and flushed once per
    FLUSH_SECONDS by the event loop (or at once without one, and at exit), so a crash loses
    at most that much; the API server's own audit log has the decision too.

    Each line is made into bytes at once (about 4 us). Making them at flush instead, a
    batch at a time, cost twice that: the record had to be copied without the request's
    objects (2 us for that copy alone) so that the buffer holds no object trees.
    """

    FLUSH_SECONDS = 0.05
    # What every audit line starts with after its time: spliced in as bytes, because
    # merging it into each record's dict cost more than serializing the record.
    HEAD = b'","level":"info","logger":"changegate.audit","msg":"admission",'

    def __init__(self, stream: Any, formatter: JSONFormatter) -> None:
        self.stream, self.formatter = stream, formatter
        self.pending: list[bytes] = []
        self.scheduled = False

    def write(self, fields: dict[str, Any]) -> None:
        record = orjson.dumps(fields, default=str)  # never empty: uid, decision, ...
        stamp = self.formatter.stamp(time.time()).encode()
        self.pending.append(b'{"ts":"' + stamp + self.HEAD + record[1:])
        if self.scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self.scheduled = True
        loop.call_later(self.FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self.scheduled = False
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        data = b"\n".join(batch) + b"\n"
        buffer = getattr(self.stream, "buffer", None)
        if buffer is not None:  # a text stream over bytes: skip a decode and an encode
            self.stream.flush()  # keep order with what was written as text
            buffer.write(data)
            buffer.flush()
        else:
            self.stream.write(data.decode())
            self.stream.flush()


_direct: _AuditLine | None = None


def setup(level: str = "info", stream: Any = None) -> None:
    global _direct
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JSONFormatter()
    handler.setFormatter(formatter)
    if _direct is not None:
        _direct.flush()
    _direct = _AuditLine(handler.stream, formatter)
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


def flush() -> None:
    """Write out buffered audit lines (the server calls it when it stops, and at exit)."""
    if _direct is not None:
        _direct.flush()


@atexit.register
def _flush_at_exit() -> None:
    with contextlib.suppress(OSError, ValueError):  # a stream already closed: nothing to do
        flush()


def audit(decision: Decision, request: AdmissionRequest | None, *, uid: str,
          seconds: float) -> None:
    if not AUDIT.isEnabledFor(logging.INFO):
        return
    if _direct is not None and not AUDIT.handlers and AUDIT.propagate:
        _direct.write(audit_fields(decision, request, uid=uid, seconds=seconds))
    else:  # someone configured logging differently: respect it
        AUDIT.info("admission", extra={"fields": audit_fields(decision, request, uid=uid,
                                                              seconds=seconds)})
