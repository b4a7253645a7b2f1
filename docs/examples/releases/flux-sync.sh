#!/bin/sh
# GitOps, step 3 as Flux performs it: the approvals Kustomization first (the apps
# Kustomization dependsOn it), then the objects, both by server-side apply as field manager
# kustomize-controller with ownership forced, as fluxcd/pkg/ssa does.
# Needs: MANIFESTS APPROVALS NS; KUBECONFIG of the controller.
set -eu
ssa="--server-side --force-conflicts --field-manager=kustomize-controller"
# shellcheck disable=SC2086
kubectl apply $ssa -n "$NS" -f "$APPROVALS"   # Kustomization "approvals"
# shellcheck disable=SC2086
kubectl apply $ssa -n "$NS" -f "$MANIFESTS"   # Kustomization "apps", dependsOn approvals
