"""The changegate operator (kopf): it records what happened, it never decides admission.

What it does (SPEC §4 rule 5, §7a, §9):
- derives every ChangeApproval's ``status`` (phase, approvers, conditions) from the API's
  state alone (the statement, the trust store, the policy, the namespace, the ledger and
  the clock), on every watch event and on a timer, so a restart changes nothing;
- moves approvals past ``expiresAt`` to ``Expired``;
- when a tier-1 Deployment or ConfigMap reaches an Approved approval's ``toDigest`` (or is
  gone, for a DELETE), records the statement's nonce in the ledger, marks the approval
  ``Applied`` and annotates the object with ``changegate.io/approval``;
- explains every digest transition of a gated tier-1 object against what it last
  recorded (``changes``, ``explain``, ``record``), and owes a review for a break-glass
  or an unexplained change (``reviews``);
- serves ``/healthz`` and ``/metrics`` (``changegate_changeapprovals{phase}``,
  ``changegate_unexplained_changes_total``, ``changegate_reviews_owed``, ...).

Modules: ``status`` (pure: what the status should say), ``ledger`` (the used-nonce
ConfigMaps), ``world`` (kopf indices -> the inputs), ``approvals`` and ``targets`` (the
handlers), ``app`` (registry, settings, run), ``api`` (raw JSON REST), ``health``,
``metrics``.

Kopf writes nothing onto the Deployments and ConfigMaps it watches: they have only
event handlers and indices, for which kopf keeps no diff-base, no progress and no
finalizer. Its own storage is under the ``changegate.io/`` prefix anyway (app.configure),
and every ``changegate.io/`` annotation is outside the digest (SPEC §3).

RBAC the operator needs, exactly (the e2e test runs it under these rules and nothing
else; ``CLUSTER_RULES`` and ``NAMESPACE_RULES`` below are the same list as data):

ClusterRole
- ``changegate.io`` ``changeapprovals``: get, list, watch, patch -- watch and index them,
  re-read one before judging it; kopf patches its finalizer ``changegate.io/operator``
  (the expiry timer needs it) onto approvals that are not yet Applied or Expired;
  create -- the review owed for a break-glass or unexplained change (reviews.py);
  delete -- terminal ones after approvalRetention (retention.py).
- ``changegate.io`` ``changeapprovals/status``: patch -- phases and conditions.
- ``apps`` ``deployments``: get, list, watch, patch -- watch targets, read one when an
  approval is Approved, write the ``changegate.io/approval`` annotation.
- ``""`` ``configmaps``: get, list, watch, patch -- the same for ConfigMap targets; also
  the trust store, the policy and the ledger in the controller namespace.
- ``""`` ``namespaces``: list, watch -- tier-1 selection, required-approvals annotation.
- ``autoscaling`` ``horizontalpodautoscalers``: list, watch -- autoscaled Deployments'
  replicas stay out of the digest.
- ``""`` ``events``: create -- kopf posts core/v1 Events (kopf.info / kopf.warn).
- ``apiextensions.k8s.io`` ``customresourcedefinitions``: list, watch -- kopf's resource
  discovery follows CRDs.
- ``admissionregistration.k8s.io`` ``validatingwebhookconfigurations``: list, watch -- the
  chart's webhook configuration, for drift (drift.py).
- ``kopf.dev`` ``clusterkopfpeerings``: list, watch, patch -- only with peering (the
  default; not with ``--standalone``). The chart must then also install kopf's
  ClusterKopfPeering CRD and the object named by ``--peering`` (default ``changegate``).

Role in the controller namespace
- ``""`` ``configmaps``: create -- the sixteen ledger ConfigMaps and the sixteen record
  ConfigMaps (record.py) when missing (patches to them are covered by the ClusterRole;
  the chart may narrow them with resourceNames).
"""

from __future__ import annotations

from typing import Any

CLUSTER_RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": ["changegate.io"], "resources": ["changeapprovals"],
     "verbs": ["get", "list", "watch", "patch", "create", "delete"]},
    {"apiGroups": ["changegate.io"], "resources": ["changeapprovals/status"],
     "verbs": ["patch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"],
     "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
     "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": ["list", "watch"]},
    {"apiGroups": ["admissionregistration.k8s.io"],
     "resources": ["validatingwebhookconfigurations"], "verbs": ["list", "watch"]},
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"],
     "verbs": ["list", "watch", "patch"]},
)
NAMESPACE_RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
)
# Canaries (SPEC §7; the chart's ``operator.canary``, on by default): create and delete
# ``<name>-canary``, promote by updating the Deployment with the approved manifest (all
# through the webhook), and read the canary's pods to judge its health. Without them a
# canary namespace cannot promote, and nothing else changes.
CANARY_RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "update", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
)
