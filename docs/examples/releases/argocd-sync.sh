#!/bin/sh
# GitOps, step 3 as Argo CD performs it (the test runs it with the controller's own
# service-account token): sync wave -1 creates the ChangeApprovals from Git (the service
# account is in the policy's trustedCreators), wave 0 writes the objects. Argo CD adds its
# tracking annotation and instance label to every object; changegate ignores both in the
# digest. SYNC_FLAGS: "" (client-side apply) or "--server-side --force-conflicts
# --field-manager argocd-controller" (ServerSideApply=true).
# Needs: MANIFESTS APPROVALS NS SYNC_FLAGS; KUBECONFIG of the controller.
set -eu
# shellcheck disable=SC2086
kubectl apply $SYNC_FLAGS -n "$NS" -f "$APPROVALS"   # wave -1
# shellcheck disable=SC2086
kubectl apply $SYNC_FLAGS -n "$NS" -f "$MANIFESTS"   # wave 0
