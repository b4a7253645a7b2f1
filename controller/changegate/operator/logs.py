"""The operator logs the project's way (changegate.logs: one JSON object per line).

Kopf's per-object loggers attach ``settings`` (the whole OperatorSettings) and a
``k8s_ref`` dict to every record; dumped as-is they would bloat each line with a repr
of the settings. They become one ``object`` field: ``ChangeApproval payments/chg-1``.
"""

from __future__ import annotations

import logging

from changegate.logs import JSONFormatter, setup

KOPF_EXTRAS = ("settings", "k8s_skip", "k8s_ref")


class OperatorFormatter(JSONFormatter):
    def format(self, record: logging.LogRecord) -> str:
        saved = {k: record.__dict__.pop(k) for k in KOPF_EXTRAS if k in record.__dict__}
        ref = saved.get("k8s_ref")
        if isinstance(ref, dict) and ref.get("name"):
            where = f"{ref['namespace']}/{ref['name']}" if ref.get("namespace") else ref["name"]
            record.__dict__["object"] = f"{ref.get('kind') or '?'} {where}"
        try:
            return super().format(record)
        finally:
            record.__dict__.pop("object", None)
            record.__dict__.update(saved)  # other handlers (kopf's event poster) read them


def setup_logging(level: str) -> None:
    setup(level)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(OperatorFormatter())
    # kopf logs every handler call ("Handler 'target-configmaps' succeeded.") at INFO: one
    # line per watch event on every ConfigMap in the cluster. Its warnings and errors stay;
    # the operator's own INFO lines (changegate.operator) tell what happened.
    if level.lower() != "debug":
        logging.getLogger("kopf").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
