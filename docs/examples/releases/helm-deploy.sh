#!/bin/sh
# Helm, step 3 (the deploy job): preflight until every approval is complete, then the
# usual `helm upgrade`. Preflight exits 1 and prints a DENY row per object that would be
# refused (with the webhook's reason) while approvals are missing, so the job retries
# instead of leaving a failed Helm revision behind; with atomic records nothing of the
# release lands until all of it may.
# Needs: RELEASE CHART VALUES NS; TRIES (default 30) x INTERVAL seconds (default 60).
set -eu
render() { helm template "$RELEASE" "$CHART" -n "$NS" -f "$VALUES"; }
tries=${TRIES:-30}
until render | changegate preflight -f - --server-side --field-manager helm -n "$NS"; do
  tries=$((tries - 1))
  if [ "$tries" -le 0 ]; then
    echo "approvals are still missing: changegate list -n $NS" >&2
    exit 1
  fi
  sleep "${INTERVAL:-60}"
done
helm upgrade "$RELEASE" "$CHART" -n "$NS" -f "$VALUES"
