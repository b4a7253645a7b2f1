#!/bin/sh
# GitOps, step 2 (each approver, offline: no cluster access needed): review and sign the
# record's files, then push the signatures to the merge request. Signing checks that each
# manifest has its toDigest. Drop --yes to confirm interactively.
# Needs: APPROVALS NS RECORD KEY.
set -eu
record=$(printf '%s' "$RECORD" | tr '[:upper:]' '[:lower:]')
for file in "$APPROVALS/$NS.$record"-*.yaml; do
  changegate approve -f "$file" --key "$KEY" --yes
done
