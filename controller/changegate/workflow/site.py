"""What the cluster says about changegate: cluster name, approvals needed, digest rules.

A requester signs for the cluster's ``clusterName`` and computes digests with the
policy's view rules, or the webhook will see other digests. The policy ConfigMap is the
source when the user may read it; otherwise the `changegate-info` ConfigMap, which every
authenticated user may read (SPEC §9); otherwise the defaults, with a note saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from changegate.core.digest import DEFAULT_RULES, ViewRules
from changegate.core.errors import ChangeGateError
from changegate.core.policy import (
    REQUIRED_APPROVALS_ANNOTATION,
    Policy,
    load_policy,
    parse_duration,
    required_approvals_value,
)
from changegate.core.snapshot import POLICY_KEY, TRUST_KEY
from changegate.core.trust import TrustStore, load_trust_store
from changegate.kube import ApiError, Kube, configmap_path

DEFAULT_CONTROLLER_NAMESPACE = "changegate"
INFO, POLICY, TRUST = "changegate-info", "changegate-policy", "changegate-trust"


@dataclass
class Site:
    cluster: str = ""
    required: int = 2
    max_lifetime: int = 24 * 3600
    require_assistance: bool = False  # SPEC §6a: requireAssistanceDeclaration
    review_deadline: int = 24 * 3600  # SPEC §7a: a review owed is overdue after this
    rules: ViewRules = DEFAULT_RULES
    policy: Policy | None = None
    notes: list[str] = field(default_factory=list)
    _autoscaled: dict[str, frozenset[str]] = field(default_factory=dict)

    def autoscaled(self, api: Kube, namespace: str, name: str) -> bool:
        """Listed in the policy, or targeted by an HPA (then replicas leave the digest)."""
        if self.policy is not None and self.policy.is_autoscaled(namespace, name):
            return True
        if namespace not in self._autoscaled:
            self._autoscaled[namespace] = _hpa_targets(api, namespace)
        return name in self._autoscaled[namespace]

    def required_in(self, api: Kube, namespace: str) -> int:
        """The namespace's annotation can only raise the count (SPEC §6)."""
        try:
            ns = api.get(f"/api/v1/namespaces/{namespace}") or {}
        except ApiError:
            return self.required
        raw = ((ns.get("metadata") or {}).get("annotations") or {}).get(
            REQUIRED_APPROVALS_ANNOTATION, "")
        value = required_approvals_value(raw)  # "²" or a huge count: ignored, as the webhook
        return self.required if value is None else max(self.required, value)


def _hpa_targets(api: Kube, namespace: str) -> frozenset[str]:
    try:
        found = api.call("GET", f"/apis/autoscaling/v2/namespaces/{namespace}/"
                         "horizontalpodautoscalers", ok_missing=True).body or {}
    except ApiError as exc:
        # Guessing "not autoscaled" would sign a digest with replicas in it that the webhook
        # (which reads HPAs) never computes: the approval would be refused as a mismatch
        # with no hint why. Say what is missing instead.
        raise ChangeGateError(
            f"cannot list HorizontalPodAutoscalers in namespace {namespace} ({exc.status}): "
            "an autoscaled Deployment's replicas stay out of its digest, so changegate must "
            "read them (the chart's changegate-tier1-editor role grants it)") from exc
    return frozenset(
        str(ref.get("name")) for item in found.get("items") or []
        for ref in [((item.get("spec") or {}).get("scaleTargetRef") or {})]
        if ref.get("kind") == "Deployment")


def _configmap_key(api: Kube, namespace: str, name: str, key: str | None
                   ) -> tuple[Any, str]:
    """(data or one key's value, "") or (None, why it could not be read)."""
    try:
        found = api.get(configmap_path(namespace, name))
    except ApiError as exc:
        return None, f"{namespace}/{name} is not readable ({exc.status})"
    if found is None:
        return None, f"{namespace}/{name} does not exist"
    data = found.get("data") or {}
    if key is None:
        return data, ""
    if key not in data:
        return None, f"{namespace}/{name} has no key {key}"
    return data[key], ""


def load_site(api: Kube, controller_namespace: str) -> Site:
    policy_text, why_policy = _configmap_key(api, controller_namespace, POLICY, POLICY_KEY)
    if policy_text is not None:
        try:
            policy = load_policy(policy_text)
        except ChangeGateError as exc:
            raise ChangeGateError(f"the cluster's policy is invalid: {exc}") from exc
        return Site(cluster=policy.clusterName, required=policy.requiredApprovals,
                    max_lifetime=policy.maxApprovalLifetime, rules=policy.view_rules,
                    require_assistance=policy.requireAssistanceDeclaration,
                    review_deadline=policy.reviewDeadline, policy=policy)
    info, why_info = _configmap_key(api, controller_namespace, INFO, None)
    if info is None:
        return Site(notes=[f"{why_info}: signing for cluster \"\" with default settings"])
    site = Site(cluster=str(info.get("clusterName", "")),
                require_assistance=str(info.get("requireAssistanceDeclaration")) == "true")
    try:
        if info.get("requiredApprovals"):
            site.required = max(1, int(info["requiredApprovals"]))
        if info.get("maxApprovalLifetime"):
            site.max_lifetime = parse_duration(str(info["maxApprovalLifetime"]))
        if info.get("reviewDeadline"):
            site.review_deadline = parse_duration(str(info["reviewDeadline"]))
    except ValueError as exc:
        raise ChangeGateError(f"{controller_namespace}/{INFO}: {exc}") from exc
    # Digest rules the policy adds to SPEC §3's defaults; published here when set.
    extra_ann = _lines(info.get("ignoredAnnotations"))
    extra_lab = _lines(info.get("ignoredLabels"))
    if extra_ann or extra_lab:
        site.rules = ViewRules(extra_ann, extra_lab)
    del why_policy  # the policy is usually private; reading changegate-info is the norm
    return site


def _lines(value: Any) -> list[str]:
    return [v.strip() for v in str(value or "").replace(",", "\n").splitlines() if v.strip()]


def load_trust(api: Kube, controller_namespace: str) -> tuple[TrustStore | None, str]:
    """The trust store when readable (approvers verify locally), else None and why."""
    text, why = _configmap_key(api, controller_namespace, TRUST, TRUST_KEY)
    if text is None:
        return None, why
    try:
        return load_trust_store(text), ""
    except ChangeGateError as exc:
        return None, f"the trust store is invalid: {exc}"
