#!/bin/sh
# Helm, step 1 (the requester, or the merge request's CI job): render the release and
# request every gated object it changes under one change record. Helm 4 writes by
# server-side apply as field manager "helm"; the request dry-runs exactly that.
# Needs: RELEASE CHART VALUES NS RECORD; KUBECONFIG of the requester.
set -eu
helm template "$RELEASE" "$CHART" -n "$NS" -f "$VALUES" \
  | changegate request -f - --server-side --field-manager helm -n "$NS" --record "$RECORD"
