#!/bin/sh
# kustomize, step 3 (the deploy job): preflight the record (every approval complete and
# still matching the live objects), then apply with prune, limited to the gated kinds.
# Needs: OVERLAY SELECTOR NS RECORD.
set -eu
changegate preflight --record "$RECORD" -n "$NS"
kubectl kustomize "$OVERLAY" \
  | kubectl apply -f - -n "$NS" --prune -l "$SELECTOR" \
      --prune-allowlist=core/v1/ConfigMap --prune-allowlist=apps/v1/Deployment
