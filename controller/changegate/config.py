"""The process configuration of `changegate serve` (docs/contracts.md): file < env < flags.

These settings are the chart's values, not the policy ConfigMap, so they stay valid when
the policy is broken: `policyAdminGroups` and `breakGlassGroups` here are what lets a
policy admin replace a broken policy. Every error names the bad setting in one line
(the CLI exits 2 with it): a typo must stop the process, never fall back to a default.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from changegate.core.errors import ChangeGateError
from changegate.core.snapshot import ProcessConfig

ENV_PREFIX = "CHANGEGATE_"
# 4 s: below the ValidatingWebhookConfiguration's timeoutSeconds (5), so the webhook
# answers with a reason before the API server gives up on it.
DEFAULT_DEADLINE = 4.0
# The API server's own request limit (3 MiB): a review carries object + oldObject, and a
# ChangeApproval's manifest alone may be 1 MiB.
DEFAULT_MAX_BODY = 3 * 1024 * 1024
MAX_DEADLINE = 30.0  # the API server caps timeoutSeconds at 30

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SA = re.compile(r"^system:serviceaccount:[a-z0-9][-a-z0-9]*:[a-z0-9][-a-z0-9.]*$")

# contracts.md key -> (kind, env var suffix). The env name is the key in UPPER_SNAKE case.
KEYS: dict[str, str] = {
    "namespace": "str",
    "trustConfigMap": "str",
    "policyConfigMap": "str",
    "operatorServiceAccount": "str",
    "policyAdminGroups": "list",
    "breakGlassGroups": "list",
    "deadlineSeconds": "float",
    "maxBodyBytes": "int",
    # A CA file: with it, `serve` requires and verifies a client certificate (the API
    # server's) on the HTTPS port (SPEC §5; opt-in).
    "clientCa": "str",
}


class ConfigError(ChangeGateError):
    """A process setting that does not validate."""


def env_name(key: str) -> str:
    """`trustConfigMap` -> `CHANGEGATE_TRUST_CONFIG_MAP`."""
    return ENV_PREFIX + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()


@dataclass(frozen=True)
class ServeConfig:
    process: ProcessConfig = field(default_factory=ProcessConfig)
    deadline_seconds: float = DEFAULT_DEADLINE
    max_body_bytes: int = DEFAULT_MAX_BODY
    client_ca: str | None = None


def _from_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            doc = yaml.safe_load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"--config {path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read ({exc})") from exc
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise ConfigError(f"--config {path}: not valid YAML ({first})") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping")
    unknown = sorted(str(k) for k in doc if k not in KEYS)
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting {unknown[0]!r} "
                          f"(known: {', '.join(KEYS)})")
    return {str(k): (v, f"{path}: {k}") for k, v in doc.items()}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, kind in KEYS.items():
        name = env_name(key)
        if name in env:
            raw = env[name]
            value: Any = [g.strip() for g in raw.split(",") if g.strip()] if kind == "list" else raw
            found[key] = (value, f"${name}")
    return found


def _coerce(key: str, value: Any, where: str) -> Any:
    kind = KEYS[key]
    if kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(
                isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(f"{where}: must be a list of non-empty strings")
        return frozenset(v.strip() for v in value)
    if kind == "float":
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not 0 < number <= MAX_DEADLINE:
            raise ConfigError(f"{where}: must be a number of seconds in (0, {MAX_DEADLINE:g}] "
                              f"(got {value!r})")
        return number
    if kind == "int":
        try:
            number_i = int(value) if not isinstance(value, bool | float) else -1
        except (TypeError, ValueError):
            number_i = -1
        if not 1024 <= number_i <= 64 * 1024 * 1024:
            raise ConfigError(f"{where}: must be an integer number of bytes from 1024 to "
                              f"67108864 (got {value!r})")
        return number_i
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string (got {value!r})")
    if key == "namespace" and not _DNS_LABEL.match(value):
        raise ConfigError(f"{where}: {value!r} is not a namespace name")
    if key in ("trustConfigMap", "policyConfigMap") and not _DNS_SUBDOMAIN.match(value):
        raise ConfigError(f"{where}: {value!r} is not a ConfigMap name")
    if key == "operatorServiceAccount" and not _SA.match(value):
        raise ConfigError(f"{where}: {value!r} is not system:serviceaccount:<ns>:<name>")
    return value


def load_config(path: str | None = None, *, env: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None) -> ServeConfig:
    """Merge file, then `CHANGEGATE_*` env, then flags (None = not given); validate all."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    if path:
        merged.update(_from_file(path))
    merged.update(_from_env(env))
    for key, value in (flags or {}).items():
        if key not in KEYS:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None and value != ():
            merged[key] = (list(value) if isinstance(value, tuple) else value,
                           "--" + re.sub(r"(?<!^)(?=[A-Z])", "-", key).lower())
    values = {key: _coerce(key, value, where) for key, (value, where) in merged.items()}
    namespace = values.get("namespace") or env.get("POD_NAMESPACE") or "changegate"
    if "namespace" not in values:
        _coerce("namespace", namespace, "$POD_NAMESPACE")
    default = ProcessConfig()
    operator_sa = values.get(
        "operatorServiceAccount",
        # The chart's operator account lives in the controller namespace.
        f"system:serviceaccount:{namespace}:changegate-operator")
    process = ProcessConfig(
        namespace=namespace,
        trust_configmap=values.get("trustConfigMap", default.trust_configmap),
        policy_configmap=values.get("policyConfigMap", default.policy_configmap),
        operator_service_account=operator_sa,
        policy_admin_groups=values.get("policyAdminGroups", frozenset()),
        break_glass_groups=values.get("breakGlassGroups", frozenset()),
    )
    return ServeConfig(process=process,
                       deadline_seconds=values.get("deadlineSeconds", DEFAULT_DEADLINE),
                       max_body_bytes=values.get("maxBodyBytes", DEFAULT_MAX_BODY),
                       client_ca=values.get("clientCa"))
