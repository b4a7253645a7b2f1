"""Evaluate a webhook entry's matchConditions the way the API server does (cel-python).

The API server calls the webhook only when every condition is true; a condition that
errors, with failurePolicy Fail, rejects the request. So a condition must never error
on the inputs below: evaluation errors raise here.
"""

from __future__ import annotations

from typing import Any

import celpy

_ENV = celpy.Environment()


def condition(expression: str, **activation: Any) -> bool:
    program = _ENV.program(_ENV.compile(expression))
    result = program.evaluate(celpy.json_to_cel(activation))
    assert isinstance(result, celpy.celtypes.BoolType), f"{expression!r} gave {result!r}"
    return bool(result)


def calls_webhook(entry: dict[str, Any], **activation: Any) -> bool:
    """True when all of the entry's matchConditions hold, i.e. the webhook is called."""
    return all(condition(c["expression"], **activation) for c in entry.get("matchConditions", []))
