#!/bin/sh
# GitOps, step 1 (the requester, on the merge request's branch): the ChangeApprovals as
# files next to the manifests, signed with the requester's key (a `role: requester`
# trust-store key, or their approver key); nothing is written to the cluster. WRITE_FLAGS
# says how the controller writes: "" for Argo CD's default client-side apply;
# "--server-side --force-conflicts --field-manager argocd-controller" for Argo CD's
# ServerSideApply=true; "--server-side --force-conflicts --field-manager
# kustomize-controller" for Flux.
# Needs: MANIFESTS APPROVALS NS RECORD KEY WRITE_FLAGS; KUBECONFIG of the requester
# (read and dry-run only).
set -eu
# shellcheck disable=SC2086  # WRITE_FLAGS is a list of flags
changegate request -f "$MANIFESTS" -n "$NS" --record "$RECORD" $WRITE_FLAGS \
  --to-dir "$APPROVALS" --key "$KEY"
