#!/bin/sh
# kustomize, step 1 (the requester): a config change renames the hashed ConfigMap, so the
# release is the new ConfigMap (CREATE), the Deployment pointing at it (UPDATE) and the old
# ConfigMap's prune (DELETE). --prune with the selector the deploy step prunes with puts
# all three under one record.
# Needs: OVERLAY SELECTOR NS RECORD; KUBECONFIG of the requester.
set -eu
kubectl kustomize "$OVERLAY" \
  | changegate request -f - --prune -l "$SELECTOR" -n "$NS" --record "$RECORD"
